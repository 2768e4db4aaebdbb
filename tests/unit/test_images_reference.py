"""Reference parsing: the normalizations Docker users rely on."""

from __future__ import annotations

import pytest

from pyswarm.common.errors import InvalidArgument
from pyswarm.worker.images.reference import looks_like_id, parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest", "tagged"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
        ("docker.io/library/busybox", "docker.io", "library/busybox", "latest", None,
         "busybox:latest"),
        ("index.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None,
         "busybox:x"),
        ("me/app:v1", "docker.io", "me/app", "v1", None, "me/app:v1"),
        ("127.0.0.1:5000/app:v1", "127.0.0.1:5000", "app", "v1", None,
         "127.0.0.1:5000/app:v1"),
        ("localhost/a/b", "localhost", "a/b", "latest", None, "localhost/a/b:latest"),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None,
         "localhost:5000/app:latest"),
        ("ghcr.io/o/r-x_y.z:1.0-rc", "ghcr.io", "o/r-x_y.z", "1.0-rc", None,
         "ghcr.io/o/r-x_y.z:1.0-rc"),
        (f"busybox@{D}", "docker.io", "library/busybox", None, D, "busybox:latest"),
        (f"busybox:1@{D}", "docker.io", "library/busybox", "1", D, "busybox:1"),
    ],
)
def test_parse(ref: str, registry: str, repository: str, tag: str | None, digest: str | None,
               tagged: str) -> None:
    r = parse_reference(ref)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repository, tag, digest)
    assert r.tagged == tagged


def test_display_and_api_host() -> None:
    assert str(parse_reference("busybox")) == "busybox:latest"
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    assert parse_reference("busybox").full_name == "docker.io/library/busybox"
    assert parse_reference("127.0.0.1:5000/a").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize("ref", [
    "", " busybox", "Busybox", "busybox:", "busybox:bad tag", "a//b", "-a", "a:b:c",
    "busybox@sha256:abc", "busybox@md5:" + "a" * 32, "/busybox", "busybox/", "a..b",
    "busybox:" + "x" * 129,
])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        parse_reference(ref)


def test_looks_like_id() -> None:
    assert looks_like_id("abcd")
    assert looks_like_id("sha256:" + "0" * 64)
    assert not looks_like_id("abc")
    assert not looks_like_id("busybox")
