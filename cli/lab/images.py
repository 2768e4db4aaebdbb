"""Images for the lab's nodes, from the host's own image store.

The cluster does not distribute images yet, so every node needs its own copy before a task
can run there. The host's store (``/var/lib/pyswarm/images``, the default engine's) is read
directly, with no host daemon: the images are saved to one archive, and that archive is
loaded into each node's store before its daemon starts, the way `pyswarm image load` would.
"""

from __future__ import annotations

from pathlib import Path

from .layout import NodeLayout

HOST_IMAGES = Path("/var/lib/pyswarm/images")
DEFAULT_IMAGES = ("busybox:latest",)


class ImageError(RuntimeError):
    pass


def export(refs: list[str], archive: Path, source: Path = HOST_IMAGES) -> None:
    """Save ``refs`` from the host store to ``archive``; a clear error for a missing one."""
    if not (source / "repositories.json").exists():
        raise ImageError(f"no image store at {source}: build the base image first "
                         f"(make base-image), or pass --image with no value to load none")
    from pyswarm.common.errors import PyswarmError
    from pyswarm.worker.images.store import ImageStore

    store = ImageStore(source)
    missing = [r for r in refs if not store.exists(r)]
    if missing:
        raise ImageError(f"invalid --image: {', '.join(missing)} not in the host's image store "
                         f"({source}); pull, load or build it there first")
    try:
        store.save(refs, archive)
    except PyswarmError as exc:
        raise ImageError(f"cannot export {', '.join(refs)} from {source}: {exc}") from None


def load(node: NodeLayout, archive: Path) -> list[str]:
    """Load the archive into the node's image store (its daemon not yet running)."""
    from pyswarm.worker.images.store import ImageStore

    return ImageStore(node.root / "images").load(archive)
