"""End to end on the real kernel: build examples/images/busybox with an overlayfs + chroot
step runner, check the image through a real overlay mount, and export/import it.

The runner here is the test's own (the engine's container runner is tested elsewhere): it
mounts the layers as overlay lowerdirs, chroots a subprocess into the merged tree and hands
back the upper dir, which is exactly the contract of StepRunner.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyswarm.worker.images.build import StepResult, build
from pyswarm.worker.images.store import ImageStore
from pyswarm.worker.runtime.spec import ProcessSpec

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists("/usr/bin/busybox"), reason="needs busybox-static"),
]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/busybox"


@contextmanager
def overlay(layers: Sequence[str], base: Path) -> Iterator[tuple[Path, Path]]:
    """(merged, upper) of an overlay over ``layers`` (bottom first)."""
    upper, work, merged, empty = (base / n for n in ("upper", "work", "merged", "empty"))
    for d in (upper, work, merged, empty):
        d.mkdir(parents=True)
    lower = ":".join(reversed(layers)) if layers else str(empty)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
                   check=True)
    try:
        yield merged, upper
    finally:
        subprocess.run(["umount", str(merged)], check=True)


class OverlayChrootRunner:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def run_step(self, layers: Sequence[str], process: ProcessSpec,
                 on_output: Callable[[str], None]) -> StepResult:
        base = Path(tempfile.mkdtemp(dir=self.tmp))
        with overlay(layers, base) as (merged, upper):
            def enter() -> None:
                os.chroot(merged)
                os.chdir(process.cwd)

            proc = subprocess.run(list(process.args), env=dict(e.split("=", 1)
                                                                for e in process.env),
                                  preexec_fn=enter, capture_output=True, text=True)
            for line in (proc.stdout + proc.stderr).splitlines():
                on_output(line)
        return StepResult(proc.returncode, upper, lambda: shutil.rmtree(base))


def test_busybox_example(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    shutil.copytree(EXAMPLE, ctx)
    shutil.copy2("/usr/bin/busybox", ctx / "busybox")
    store = ImageStore(tmp_path / "store")
    runs = tmp_path / "runs"
    runs.mkdir()
    progress: list[str] = []
    img = build(store, ctx, ctx / "Dockerfile", ["busybox:latest"], {},
                OverlayChrootRunner(runs), progress.append)
    assert img.repo_tags == ("busybox:latest",)
    assert img.config["config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in img.config["config"]["Env"])

    with overlay(img.layer_dirs, tmp_path / "check") as (root, _):
        assert os.readlink(root / "bin/sh") == "/bin/busybox"
        assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
        assert (root / "var/www").is_dir() and (root / "root").is_dir()
        assert "nobody:x:65534:65534" in (root / "etc/passwd").read_text()
        assert "nogroup:x:65534:" in (root / "etc/group").read_text()
        out = subprocess.run(["/bin/sh", "-c", "echo $((6*7)) && ls /bin | wc -l"],
                             preexec_fn=lambda: os.chroot(root), capture_output=True,
                             text=True, env={"PATH": "/bin"}, check=True).stdout.split()
        assert out[0] == "42" and int(out[1]) > 100

    # Rebuilding is all cache hits, and export/import keeps the id.
    again: list[str] = []
    rebuilt = build(store, ctx, ctx / "Dockerfile", ["busybox:latest"], {},
                    OverlayChrootRunner(runs), again.append)
    assert rebuilt.id == img.id
    assert sum("CACHED" in p for p in again) == 6
    out = tmp_path / "busybox.tar"
    store.save(["busybox"], out)
    other = ImageStore(tmp_path / "other")
    assert other.load(out) == ["busybox:latest"]
    assert other.get("busybox").id == img.id


def test_whiteouts_work_in_a_real_overlay(tmp_path: Path) -> None:
    """A committed deletion and an opaque folder hide lower content under overlayfs."""
    store = ImageStore(tmp_path / "store")
    ctx = tmp_path / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "d/old").write_text("old")
    (ctx / "keep").write_text("keep")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    base = build(store, ctx, ctx / "Dockerfile", [], {}, OverlayChrootRunner(runs), print)
    with overlay(base.layer_dirs, tmp_path / "c1") as (merged, upper):
        (merged / "keep").unlink()
        shutil.rmtree(merged / "d")
        (merged / "d").mkdir()  # overlay makes this an opaque dir
        (merged / "d/new").write_text("new")
        img = store.commit(base, upper, comment="rm")
    with overlay(img.layer_dirs, tmp_path / "c2") as (merged, _):
        assert not (merged / "keep").exists()
        assert sorted(os.listdir(merged / "d")) == ["new"]
