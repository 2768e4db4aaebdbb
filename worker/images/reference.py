"""Image references as Docker reads them.

``busybox`` is ``docker.io/library/busybox:latest``; the store keys tags by the short
("familiar") form Docker prints (``busybox:latest``, ``127.0.0.1:5000/app:v1``), and the
registry client uses the full form. A reference names a tag, a digest, or both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyswarm.common.errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# Where Docker Hub's API really lives.
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?$|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    registry: str  # "docker.io", "127.0.0.1:5000"
    repository: str  # path inside the registry: "library/busybox", "app"
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>" of a manifest

    @property
    def name(self) -> str:
        """The short repository name Docker prints: ``busybox``, ``127.0.0.1:5000/app``."""
        if self.registry == DEFAULT_REGISTRY:
            if self.repository.startswith("library/") and self.repository.count("/") == 1:
                return self.repository[len("library/") :]
            return self.repository
        return f"{self.registry}/{self.repository}"

    @property
    def full_name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DEFAULT_REGISTRY else self.registry

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    @property
    def tagged(self) -> str:
        """``name:tag`` (the key of the tag index); ``latest`` when the ref had neither."""
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def _bad(ref: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid reference format: {why}: {ref!r}")


def parse_reference(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize; ``default_tag`` adds ``latest`` when neither tag nor digest."""
    if not ref or ref != ref.strip():
        raise _bad(ref, "empty or padded with spaces")
    rest = ref
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise _bad(ref, "digest must be sha256: and 64 lowercase hex digits")
    tag = None
    # A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise _bad(ref, "bad tag")
    if not rest:
        raise _bad(ref, "missing repository name")
    parts = rest.split("/")
    registry = DEFAULT_REGISTRY
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"
                           or first != first.lower()):
        if not _DOMAIN.match(first):
            raise _bad(ref, "bad registry host")
        registry = first
        parts = parts[1:]
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    for p in parts:
        if p != p.lower():
            raise _bad(ref, "repository name must be lowercase")
        if not _COMPONENT.match(p):
            raise _bad(ref, "bad repository name")
    repository = "/".join(parts)
    if registry == DEFAULT_REGISTRY and len(parts) == 1:
        repository = f"library/{repository}"
    if len(repository) > _MAX_NAME:
        raise _bad(ref, "repository name too long")
    if default_tag and tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def looks_like_id(s: str) -> bool:
    """A full or short image id (``sha256:`` optional), as opposed to a name."""
    h = s[len("sha256:") :] if s.startswith("sha256:") else s
    return 4 <= len(h) <= 64 and all(c in "0123456789abcdef" for c in h)
