"""The Dockerfile builder against the real store and a fake step runner."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pyswarm.common.errors import InvalidArgument, NotFound
from pyswarm.worker.images.build import StepResult, build
from pyswarm.worker.images.store import ImageStore
from pyswarm.worker.runtime.spec import ProcessSpec

from .test_images_helpers import Entry, layer_tar, save_archive


class FakeRunner:
    """Interprets RUN scripts as `write PATH TEXT && echo MSG && exit N`, in an upper dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.calls: list[tuple[tuple[str, ...], ProcessSpec]] = []
        self.cleaned = 0

    def run_step(self, layers: Sequence[str], process: ProcessSpec,
                 on_output: Callable[[str], None]) -> StepResult:
        self.calls.append((tuple(layers), process))
        upper = Path(tempfile.mkdtemp(dir=self.tmp))
        code = 0
        for cmd in process.args[-1].split("&&"):
            w = cmd.split()
            if w and w[0] == "write":
                p = upper / w[1].lstrip("/")
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(w[2])
            elif w and w[0] == "echo":
                on_output(" ".join(w[1:]))
            elif w and w[0] == "exit":
                code = int(w[1])

        def cleanup() -> None:
            self.cleaned += 1
            shutil.rmtree(upper)

        return StepResult(code, upper, cleanup)


@pytest.fixture
def env(tmp_path: Path) -> tuple[ImageStore, Path, FakeRunner]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text("print('hi')\n")
    (ctx / "conf").mkdir()
    (ctx / "conf/a.ini").write_text("a=1\n")
    (ctx / "conf/b.ini").write_text("b=2\n")
    os.chmod(ctx / "app.py", 0o755)
    runner_tmp = tmp_path / "run"
    runner_tmp.mkdir()
    return ImageStore(tmp_path / "store"), ctx, FakeRunner(runner_tmp)


def _build(env: tuple[ImageStore, Path, FakeRunner], text: str, tags: list[str] | None = None,
           args: dict[str, str] | None = None, no_cache: bool = False,
           out: list[str] | None = None):  # type: ignore[no-untyped-def]
    store, ctx, runner = env
    (ctx / "Dockerfile").write_text(text)
    progress = out if out is not None else []
    return build(store, ctx, ctx / "Dockerfile", tags or [], args or {}, runner,
                 progress.append, no_cache=no_cache)


DOCKERFILE = """\
FROM scratch
ARG DEST=/srv
ARG UNSET
ENV APP_HOME=${DEST}/app LEVEL=info
WORKDIR $APP_HOME
COPY app.py ./
COPY conf/*.ini /etc/app/
COPY --chown=10:20 --chmod=640 conf/a.ini /etc/owned.ini
RUN write /var/log/built ok && echo building
USER 10:20
EXPOSE 8080 53/udp
LABEL org.example.v="1" b=two
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD ["/app", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3"]
CMD app.py
"""


def test_build_result(env: tuple[ImageStore, Path, FakeRunner], tmp_path: Path) -> None:
    store, ctx, runner = env
    progress: list[str] = []
    img = _build(env, DOCKERFILE, ["app:1"], {"DEST": "/opt"}, out=progress)
    assert img.repo_tags == ("app:1",)
    c = img.config["config"]
    assert c["Env"] == ["APP_HOME=/opt/app", "LEVEL=info"]
    assert c["WorkingDir"] == "/opt/app"
    assert c["User"] == "10:20"
    assert c["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert c["Labels"] == {"org.example.v": "1", "b": "two"}
    assert c["Healthcheck"] == {"Test": ["CMD", "/app", "health"], "Interval": 5 * 10**9,
                                "Timeout": 2 * 10**9, "Retries": 4}
    assert c["Entrypoint"] == ["python3"]
    assert c["Cmd"] == ["/bin/sh", "-c", "app.py"]
    assert c["StopSignal"] == "SIGTERM"
    # WORKDIR (new folder), three COPYs and the RUN made layers; the rest did not.
    assert len(img.layer_dirs) == 5
    assert [h.get("empty_layer", False) for h in img.config["history"]].count(False) == 5
    merged = _merged(img.layer_dirs, tmp_path / "merged")
    assert (merged / "opt/app/app.py").read_text() == "print('hi')\n"
    assert stat.S_IMODE(os.stat(merged / "opt/app/app.py").st_mode) == 0o755
    assert sorted(os.listdir(merged / "etc/app")) == ["a.ini", "b.ini"]
    owned = os.stat(Path(img.layer_dirs[3]) / "etc/owned.ini")  # copytree drops owners
    if os.geteuid() == 0:
        assert (owned.st_uid, owned.st_gid) == (10, 20)
    assert stat.S_IMODE(owned.st_mode) == 0o640
    assert (merged / "var/log/built").read_text() == "ok"
    # The RUN saw the layers so far, the env, the build args and the working dir.
    [(layers, proc)] = runner.calls
    assert len(layers) == 4
    assert proc.args == ("/bin/sh", "-c", "write /var/log/built ok && echo building")
    assert proc.cwd == "/opt/app"
    assert "APP_HOME=/opt/app" in proc.env and "DEST=/opt" in proc.env
    assert any(e.startswith("PATH=") for e in proc.env)
    assert runner.cleaned == 1
    assert "building" in progress
    assert progress[0] == "Step 1/16 : FROM scratch"
    assert progress[-1] == "Successfully tagged app:1"
    # Intermediate images stay out of the list.
    assert [i.repo_tags for i in store.list()] == [("app:1",)]


def _merged(layer_dirs: Sequence[str], out: Path) -> Path:
    """Good enough for tests without whiteouts: later layers copied over earlier ones."""
    for d in layer_dirs:
        shutil.copytree(d, out, symlinks=True, dirs_exist_ok=True)
    return out


def test_cache_hit_then_miss(env: tuple[ImageStore, Path, FakeRunner]) -> None:
    store, ctx, runner = env
    text = "FROM scratch\nCOPY conf /conf\nRUN write /x 1\nCOPY app.py /app.py\nCMD [\"x\"]\n"
    first = _build(env, text, ["c:1"])
    assert len(runner.calls) == 1
    progress: list[str] = []
    second = _build(env, text, ["c:1"], out=progress)
    assert second.id == first.id
    assert len(runner.calls) == 1
    assert sum("CACHED" in p for p in progress) == 4
    # Changing a file copied after the RUN keeps the RUN cached.
    (ctx / "app.py").write_text("changed\n")
    third = _build(env, text, ["c:1"])
    assert third.id != first.id and len(runner.calls) == 1
    # Changing a file copied before it re-runs it.
    (ctx / "conf/a.ini").write_text("a=2\n")
    _build(env, text, ["c:1"])
    assert len(runner.calls) == 2
    # --no-cache runs everything.
    _build(env, text, ["c:1"], no_cache=True)
    assert len(runner.calls) == 3
    # A build arg a RUN sees is part of its key.
    text2 = "FROM scratch\nARG V=1\nRUN write /v x\n"
    _build(env, text2, ["v"])
    _build(env, text2, ["v"])
    assert len(runner.calls) == 4
    _build(env, text2, ["v"], {"V": "2"})
    assert len(runner.calls) == 5


def test_failing_run_tags_nothing(env: tuple[ImageStore, Path, FakeRunner]) -> None:
    store, _, runner = env
    with pytest.raises(InvalidArgument,
                       match=r"^Dockerfile:3: RUN write /a 1 && exit 3: returned a non-zero "
                             r"code: 3$"):
        _build(env, "FROM scratch\nCOPY app.py /\nRUN write /a 1 && exit 3\n", ["bad:1"])
    assert runner.cleaned == 1
    with pytest.raises(NotFound):
        store.get("bad:1")
    assert store.list() == []


def test_from_image_keeps_parent_dir_metadata(env: tuple[ImageStore, Path, FakeRunner],
                                              tmp_path: Path) -> None:
    store, ctx, _ = env
    arc = tmp_path / "base.tar"
    save_archive(arc, [layer_tar([Entry("tmp", "dir", mode=0o1777),
                                  Entry("etc", "dir", mode=0o755),
                                  Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"
                                        b"app:x:1000:1001::/home/app:/bin/sh\n")])], ["base"])
    store.load(arc)
    img = _build(env, "FROM base\nCOPY --chown=app app.py /tmp/sub/\nWORKDIR /tmp\n", ["x"])
    top = Path(img.layer_dirs[1])
    assert stat.S_IMODE(os.stat(top / "tmp").st_mode) == 0o1777
    if os.geteuid() == 0:
        assert os.stat(top / "tmp/sub/app.py").st_uid == 1000
        assert os.stat(top / "tmp/sub/app.py").st_gid == 1001
    assert len(img.layer_dirs) == 2  # /tmp existed: WORKDIR made no layer
    assert img.config["config"]["Cmd"] == ["sh"]  # inherited
    assert img.parent is not None


def test_add_extracts_local_tar(env: tuple[ImageStore, Path, FakeRunner]) -> None:
    _, ctx, _ = env
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = b"inside"
        ti = tarfile.TarInfo("pkg/file.txt")
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    (ctx / "pkg.tgz").write_bytes(buf.getvalue())
    img = _build(env, "FROM scratch\nADD pkg.tgz /opt/\nCOPY pkg.tgz /raw/\n")
    assert (Path(img.layer_dirs[0]) / "opt/pkg/file.txt").read_bytes() == b"inside"
    assert (Path(img.layer_dirs[1]) / "raw/pkg.tgz").is_file()


@pytest.mark.parametrize(("text", "msg"), [
    ("FROM scratch\nCOPY ../x /x\n", "Dockerfile:2: forbidden path outside the build context"),
    ("FROM scratch\nCOPY nothing* /x/\n", "Dockerfile:2: COPY failed: no source files"),
    ("FROM scratch\nEXPOSE 99999\n", "Dockerfile:2: EXPOSE"),
    ("RUN x\n", "Dockerfile:1: the first instruction must be FROM"),
    ("FROM scratch\nFROM scratch\n", "Dockerfile:2: multi-stage"),
    ("FROM scratch\nCOPY --chown=nobody app.py /\n", "Dockerfile:2: unable to find user"),
    ("FROM scratch\nADD http://example.com/x /x\n", "Dockerfile:2: ADD from a URL"),
])
def test_build_errors(env: tuple[ImageStore, Path, FakeRunner], text: str, msg: str) -> None:
    with pytest.raises(InvalidArgument, match="^" + msg):
        _build(env, text)


def test_symlink_escape_in_context(env: tuple[ImageStore, Path, FakeRunner]) -> None:
    _, ctx, _ = env
    os.symlink("/etc/hostname", ctx / "leak")
    with pytest.raises(InvalidArgument, match="outside the build context"):
        _build(env, "FROM scratch\nCOPY leak /leak\n")


def test_history_records_steps(env: tuple[ImageStore, Path, FakeRunner]) -> None:
    img = _build(env, "FROM scratch\nENV A=1\nCOPY app.py /\n")
    hist = img.config["history"]
    assert hist[0]["empty_layer"] is True and "ENV A=1" in hist[0]["created_by"]
    assert "COPY" in hist[1]["created_by"] and "empty_layer" not in hist[1]
    json.dumps(img.config)


def test_dockerignore(env: tuple[ImageStore, Path, FakeRunner]) -> None:
    _, ctx, _ = env
    (ctx / ".git").mkdir()
    (ctx / ".git/HEAD").write_text("ref")
    (ctx / "conf/secret.key").write_text("k")
    (ctx / "notes.md").write_text("n")
    (ctx / "README.md").write_text("r")
    (ctx / ".dockerignore").write_text("# comment\n.git\n**/*.key\n*.md\n!README.md\n")
    img = _build(env, "FROM scratch\nCOPY . /src/\n")
    top = Path(img.layer_dirs[0]) / "src"
    assert sorted(os.listdir(top)) == [".dockerignore", "Dockerfile", "README.md", "app.py",
                                       "conf"]
    assert sorted(os.listdir(top / "conf")) == ["a.ini", "b.ini"]
    with pytest.raises(InvalidArgument, match="no source files"):
        _build(env, "FROM scratch\nCOPY notes.md /\n")
