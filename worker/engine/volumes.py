"""Named volumes: folders under ``<root>/volumes/<name>/_data`` that outlive containers.

Also the parser for ``-v`` arguments, which decides between a bind mount (the source is an
absolute host path), a named volume (the source is a name) and an anonymous volume (no
source: a fresh volume with a random name, removed with the container by ``rm -v``/``--rm``).
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyswarm.common.errors import Conflict, InvalidArgument, NotFound

VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


@dataclass(frozen=True)
class VolumeArg:
    """One parsed ``-v`` value."""

    kind: str  # "bind" | "volume"
    source: str  # host path for bind; volume name for volume ("" = anonymous)
    destination: str
    read_only: bool


def parse_volume_arg(text: str) -> VolumeArg:
    parts = text.split(":")
    if len(parts) == 1:
        source, dest, mode = "", parts[0], ""
    elif len(parts) == 2:
        if parts[1] in ("ro", "rw"):
            source, dest, mode = "", parts[0], parts[1]
        else:
            source, dest, mode = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, dest, mode = parts
    else:
        raise InvalidArgument(f'invalid volume specification "{text}": too many colons')
    if not dest.startswith("/"):
        raise InvalidArgument(
            f'invalid volume specification "{text}": the destination "{dest}" '
            f"must be an absolute path"
        )
    if dest == "/":
        raise InvalidArgument(f'invalid volume specification "{text}": cannot mount over /')
    if mode not in ("", "ro", "rw"):
        raise InvalidArgument(
            f'invalid volume specification "{text}": unknown mode "{mode}" (use ro or rw)'
        )
    read_only = mode == "ro"
    if source.startswith("/"):
        return VolumeArg("bind", source, dest, read_only)
    if source and not VOLUME_NAME_RE.match(source):
        raise InvalidArgument(
            f'invalid volume specification "{text}": "{source}" is neither an absolute host '
            f"path nor a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        )
    return VolumeArg("volume", source, dest, read_only)


@dataclass(frozen=True)
class Volume:
    name: str
    mountpoint: Path
    created: str


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        if not VOLUME_NAME_RE.match(name):
            raise InvalidArgument(f'invalid volume name "{name}"')
        return self.root / name

    def create(self, name: str = "") -> tuple[Volume, bool]:
        """Returns the volume and whether it was created now (False: it existed)."""
        name = name or secrets.token_hex(32)
        folder = self._dir(name)
        if (folder / "meta.json").exists():
            return self.get(name), False
        (folder / "_data").mkdir(parents=True, exist_ok=True)
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        (folder / "meta.json").write_text(json.dumps({"name": name, "created": created}))
        return Volume(name, folder / "_data", created), True

    def get(self, name: str) -> Volume:
        folder = self._dir(name)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"no such volume: {name}") from None
        return Volume(name, folder / "_data", meta.get("created", ""))

    def list(self) -> list[Volume]:
        found = []
        for meta in sorted(self.root.glob("*/meta.json")):
            found.append(self.get(meta.parent.name))
        return found

    def remove(self, name: str, users: builtins.list[str], force: bool = False) -> None:
        """Refuses while any container (running or not) uses it, as Docker does."""
        self.get(name)
        if users and not force:
            raise Conflict(
                f"remove {name}: volume is in use - [{', '.join(u[:12] for u in users)}]"
            )
        shutil.rmtree(self._dir(name))
