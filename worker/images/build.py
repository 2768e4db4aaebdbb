"""``pyswarm image build``: run a parsed Dockerfile against the image store.

Every instruction makes an image (an intermediate one, hidden from ``list``) on the previous
one, exactly like Docker's classic builder; COPY, ADD, RUN and a WORKDIR that must create its
folder add a layer, the rest only change the config (history entry marked empty_layer).

Cache policy: a step's key is the parent image id + the instruction after substitution +
what else decides its result — for COPY/ADD a hash of the staged files (content, modes,
owners, link targets; not mtimes), for RUN the build-arg values it sees. A hit reuses the
cached image ("CACHED"); the first miss makes every later step miss (new parent id).
``no_cache`` skips lookups but still records results.

RUN goes through an injected StepRunner (the engine's real containers, a fake in tests).
The build tags nothing unless every step succeeded.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyswarm.common.errors import CorruptData, InvalidArgument, NotFound
from pyswarm.worker.runtime.spec import ProcessSpec

from . import dockerfile as df
from .layers import open_decompressed, unpack_layer
from .reference import parse_reference
from .store import Image, ImageStore

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class StepResult:
    exit_code: int
    upper_dir: Path  # the container's overlay upper dir: packed into the step's layer
    cleanup: Callable[[], None]  # called once the layer is made (or the step failed)


class StepRunner(Protocol):
    def run_step(self, layers: Sequence[str], process: ProcessSpec,
                 on_output: Callable[[str], None]) -> StepResult:
        """Run ``process`` in a container over ``layers`` (bottom first) until it exits."""
        ...


@dataclass
class _State:
    image: Image | None  # None: FROM scratch with no step yet
    config: dict[str, Any]  # the image config's "config" section being built
    args: dict[str, str]  # ARG values in scope
    cmd_set: bool = False


def build(store: ImageStore, context_dir: Path, dockerfile: Path, tags: list[str],
          build_args: dict[str, str], runner: StepRunner,
          progress: Callable[[str], None], no_cache: bool = False) -> Image:
    try:
        text = Path(dockerfile).read_text()
    except FileNotFoundError:
        raise InvalidArgument(f"Dockerfile not found: {dockerfile}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{dockerfile}: not a text file") from None
    for t in tags:
        parse_reference(t)  # refuse a bad tag before any work
    return _Builder(store, Path(context_dir), build_args, runner, progress, no_cache).run(
        df.parse(text), tags)


build_image = build  # the name the engine imports


class _Builder:
    def __init__(self, store: ImageStore, context: Path, build_args: dict[str, str],
                 runner: StepRunner, progress: Callable[[str], None], no_cache: bool) -> None:
        self.store = store
        self.context = context.resolve()
        self.build_args = dict(build_args)
        self.runner = runner
        self.progress = progress
        self.no_cache = no_cache
        self.used_args: set[str] = set()
        self.ignored = _dockerignore(self.context)

    def run(self, instructions: list[df.Instruction], tags: list[str]) -> Image:
        if not instructions:
            raise InvalidArgument("Dockerfile: the file has no instructions")
        meta_args: dict[str, str] = {}
        pre = 0
        while pre < len(instructions) and instructions[pre].cmd == "ARG":
            name, value = self._arg(instructions[pre], meta_args)
            meta_args[name] = value
            pre += 1
        rest = instructions[pre:]
        if not rest or rest[0].cmd != "FROM":
            line = rest[0].line if rest else instructions[-1].line
            raise df.error(line, "the first instruction must be FROM (ARG may precede it)")
        st: _State | None = None
        total = len(rest)
        for n, inst in enumerate(rest, 1):
            if inst.cmd == "FROM" and n > 1:
                raise df.error(inst.line, "multi-stage builds are not supported")
            self.progress(f"Step {n}/{total} : {inst.text}")
            if inst.cmd == "FROM":
                st = self._from(inst, meta_args)
            else:
                assert st is not None
                self._step(st, inst, meta_args)
            if st.image is not None:
                self.progress(f" ---> {st.image.short_id}")
        assert st is not None
        if st.image is None or st.config != st.image.config.get("config", {}):
            st.image = self._commit(st, None, "", inst_text="", key=None)
        unused = sorted(set(self.build_args) - self.used_args)
        if unused:
            self.progress(f"[Warning] One or more build-args {unused} were not consumed")
        final = st.image
        self.store.promote(final.id)
        self.progress(f"Successfully built {final.short_id}")
        for t in tags:
            self.store.tag(final.id, t)
            self.progress(f"Successfully tagged {parse_reference(t).tagged}")
        return self.store.get(final.id)

    # ------------------------------------------------------------------ helpers

    def _env(self, st: _State) -> dict[str, str]:
        return df.substitution_env(st.config, st.args)

    def _arg(self, inst: df.Instruction, scope: dict[str, str]) -> tuple[str, str]:
        name, eq, default = inst.args.partition("=")
        name = name.strip()
        if name in self.build_args:
            self.used_args.add(name)
            return name, self.build_args[name]
        if eq:
            return name, df.word(default, scope, inst.line)
        return name, scope.get(name, "")

    def _cached(self, key: str) -> Image | None:
        if self.no_cache:
            return None
        hit = self.store.cache_get(key)
        if hit is not None:
            self.progress(" ---> Using cache (CACHED)")
        return hit

    def _key(self, st: _State, *parts: str) -> str:
        h = hashlib.sha256(json.dumps([st.image.id if st.image else "scratch",
                                       st.config, *parts], sort_keys=True).encode())
        return "sha256:" + h.hexdigest()

    def _commit(self, st: _State, layer: Path | None, created_by: str, *, inst_text: str,
                key: str | None) -> Image:
        img = self.store.create_image(st.image, [layer] if layer else [],
                                      container_config=st.config,
                                      created_by=created_by or inst_text,
                                      intermediate=True)
        if key:
            self.store.cache_put(key, img.id)
        return img

    def _config_step(self, st: _State, inst: df.Instruction, text: str) -> None:
        """A config-only step: an image with an empty_layer history entry, cached."""
        key = self._key(st, text)
        hit = self._cached(key)
        st.image = hit or self._commit(st, None, f"/bin/sh -c #(nop) {text}", inst_text=text,
                                       key=key)

    # ------------------------------------------------------------------ instructions

    def _from(self, inst: df.Instruction, meta_args: dict[str, str]) -> _State:
        ref = df.word(inst.args.split()[0], meta_args, inst.line)
        if ref == "scratch":
            return _State(None, {}, {})
        try:
            base = self.store.get(ref)
        except NotFound:
            self.progress(f"Pulling {ref}")
            try:
                base = self.store.pull(ref, self.progress)
            except Exception as e:  # noqa: BLE001 - reported with the line it belongs to
                raise df.error(inst.line, f"FROM {ref}: {e}") from None
        except InvalidArgument as e:
            raise df.error(inst.line, str(e)) from None
        return _State(base, json.loads(json.dumps(base.config.get("config") or {})), {})

    def _step(self, st: _State, inst: df.Instruction, meta_args: dict[str, str]) -> None:
        c, line = inst.cmd, inst.line
        env = self._env(st)
        if c == "ARG":
            name, value = self._arg(inst, {**meta_args, **env})
            if "=" not in inst.args and name not in self.build_args and name in meta_args:
                value = meta_args[name]
            st.args[name] = value
            self._config_step(st, inst, f"ARG {name}")
        elif c == "WORKDIR":
            self._workdir(st, df.apply_config(st.config, inst, env))
        elif c in df.CONFIG_ONLY:
            text = df.apply_config(st.config, inst, env, cmd_set=st.cmd_set)
            st.cmd_set = st.cmd_set or c == "CMD"
            self._config_step(st, inst, text)
        elif c in ("COPY", "ADD"):
            self._copy(st, inst, env)
        elif c == "RUN":
            self._run(st, inst)
        else:  # pragma: no cover - the parser admits only the above
            raise df.error(line, f"{c} is not supported")

    def _workdir(self, st: _State, text: str) -> None:
        """WORKDIR's config change is done; this makes its folder a layer if missing."""
        path = st.config["WorkingDir"]
        key = self._key(st, text)
        hit = self._cached(key)
        if hit:
            st.image = hit
            return
        if _lookup(st.image, path) is not None:
            st.image = self._commit(st, None, f"/bin/sh -c #(nop) {text}", inst_text=text,
                                    key=key)
            return
        with self._staging() as stage:
            _stage_parents(st.image, stage, path, include_self=True)
            st.image = self._commit(st, Path(stage), text, inst_text=text, key=key)

    def _staging(self) -> tempfile.TemporaryDirectory[str]:
        return _TmpDir(self.store.tmp)

    def _run(self, st: _State, inst: df.Instruction) -> None:
        argv = df.command(st.config, inst)
        if not argv:
            raise df.error(inst.line, "RUN: empty command")
        env_list = list(st.config.get("Env") or [])
        names = {e.partition("=")[0] for e in env_list}
        # Build args reach RUN as environment (and so are part of its cache key).
        arg_env = [f"{k}={v}" for k, v in sorted(st.args.items()) if k not in names]
        if "PATH" not in names:
            env_list.append(f"PATH={DEFAULT_PATH}")
        key = self._key(st, "RUN", json.dumps(argv), *arg_env)
        hit = self._cached(key)
        if hit:
            st.image = hit
            return
        process = ProcessSpec(args=tuple(argv), env=tuple(env_list + arg_env),
                              cwd=st.config.get("WorkingDir") or "/",
                              user=st.config.get("User") or "")
        layers = st.image.layer_dirs if st.image else ()
        result = self.runner.run_step(layers, process, self.progress)
        try:
            if result.exit_code != 0:
                shown = json.dumps(argv) if df.exec_form(inst.args, inst.line) else inst.args
                raise df.error(inst.line, f"RUN {shown}: returned a non-zero code: "
                                          f"{result.exit_code}")
            created_by = ("|" + str(len(arg_env)) + " " + " ".join(arg_env) + " "
                          if arg_env else "") + " ".join(argv)
            st.image = self._commit(st, result.upper_dir, created_by, inst_text=inst.text,
                                    key=key)
        finally:
            result.cleanup()

    # ------------------------------------------------------------------ COPY / ADD

    def _copy(self, st: _State, inst: df.Instruction, env: dict[str, str]) -> None:
        line = inst.line
        items = df.exec_form(inst.args, line) or df.words(inst.args, env, line)
        if len(items) < 2:
            raise df.error(line, f"{inst.cmd} requires at least two arguments")
        srcs, dest = items[:-1], items[-1]
        uid, gid = self._owner(st, inst, env)
        chmod = inst.flag("chmod")
        mode = int(chmod, 8) if chmod else None
        workdir = st.config.get("WorkingDir") or "/"
        dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
        into_dir = dest.endswith("/") or dest in (".", "..") or len(srcs) > 1
        sources: list[Path] = []
        for s in srcs:
            if inst.cmd == "ADD" and ("://" in s):
                raise df.error(line, "ADD from a URL is not supported")
            matches = self._glob(s, line)
            if not matches:
                raise df.error(line, f"{inst.cmd} failed: no source files match {s!r} in the "
                                     "build context")
            sources.extend(matches)
        if len(sources) > 1:
            into_dir = True
        existing = _lookup(st.image, dest_abs)
        dest_is_dir = into_dir or (existing is not None and stat.S_ISDIR(existing[0]))
        with self._staging() as stage:
            root = Path(stage)
            for src in sources:
                if src.is_dir():
                    target = dest_abs
                    _stage_parents(st.image, root, target, include_self=True,
                                   owner=(uid, gid))
                    _copy_tree(src, root / target.lstrip("/"), uid, gid, mode,
                               lambda p: self.ignored(os.path.relpath(p, self.context)))
                elif inst.cmd == "ADD" and _is_archive(src):
                    _stage_parents(st.image, root, dest_abs, include_self=True,
                                   owner=(uid, gid))
                    try:
                        with open(src, "rb") as f:
                            unpack_layer(open_decompressed(f), root / dest_abs.lstrip("/"), [],
                                         f"ADD {src.name}")
                    except CorruptData as e:
                        raise df.error(line, str(e)) from None
                else:
                    target = posixpath.join(dest_abs, src.name) if dest_is_dir else dest_abs
                    _stage_parents(st.image, root, target, include_self=False,
                                   owner=(uid, gid) if dest_is_dir else None)
                    _copy_file(src, root / target.lstrip("/"), uid, gid, mode)
            text = f"{inst.cmd} --chown={uid}:{gid}{f' --chmod={chmod}' if chmod else ''} " \
                   f"{' '.join(srcs)} {dest_abs}"
            digest = _tree_digest(root)
            key = self._key(st, text, digest)
            hit = self._cached(key)
            if hit:
                st.image = hit
                return
            st.image = self._commit(st, root, f"{text} # {digest[:19]}", inst_text=text,
                                    key=key)

    def _glob(self, pattern: str, line: int) -> list[Path]:
        rel = posixpath.normpath(pattern.lstrip("/")) or "."
        if rel == ".." or rel.startswith("../"):
            raise df.error(line, f"forbidden path outside the build context: {pattern}")
        if glob.has_magic(rel):
            found = sorted(glob.glob(rel, root_dir=self.context))
        else:
            found = [rel] if os.path.lexists(self.context / rel) else []
        found = [f for f in found if not self.ignored(posixpath.normpath(f))]
        out = []
        for f in found:
            real = Path(os.path.realpath(self.context / f))
            if real != self.context and self.context not in real.parents:
                raise df.error(line, f"forbidden path outside the build context: {f}")
            out.append(real)
        return out

    def _owner(self, st: _State, inst: df.Instruction, env: dict[str, str]) -> tuple[int, int]:
        chown = inst.flag("chown")
        if chown is None:
            return 0, 0
        chown = df.word(chown, env, inst.line)
        user, _, group = chown.partition(":")
        uid = _resolve_id(st.image, "/etc/passwd", user, inst.line)
        if group:
            gid = _resolve_id(st.image, "/etc/group", group, inst.line)
        elif user.isdigit():
            gid = uid
        else:
            gid = _primary_gid(st.image, user)
        return uid, gid


class _TmpDir(tempfile.TemporaryDirectory):  # type: ignore[type-arg]
    """A staging folder inside the store (same filesystem as the layers)."""

    def __init__(self, base: Path) -> None:
        super().__init__(dir=base, prefix=f"stage-{os.getpid()}-")
        os.chmod(self.name, 0o755)


# ----------------------------------------------------------------------------- file helpers


def _lookup(image: Image | None, path: str) -> tuple[int, int, int, int] | None:
    """(mode, uid, gid, mtime_ns) of ``path`` as the image's merged view shows it."""
    if image is None:
        return None
    rel = path.strip("/")
    if not rel:
        return (stat.S_IFDIR | 0o755, 0, 0, 0)
    parts = rel.split("/")
    for d in reversed(image.layer_dirs):
        cur = d
        for i, p in enumerate(parts):
            below_opaque = i > 0 and _opaque(cur)
            cur = os.path.join(cur, p)
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                if below_opaque:
                    return None  # an opaque folder hides the layers below it
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # whited out
            if i == len(parts) - 1:
                return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            if not stat.S_ISDIR(st.st_mode):
                break
    return None


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False


def _stage_parents(image: Image | None, root: Path | str, path: str, *, include_self: bool,
                   owner: tuple[int, int] | None = None) -> None:
    """Create the folders leading to ``path`` in a staging tree with the image's metadata,
    so that the layer does not change the mode or owner of, say, /tmp."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not include_self:
        parts = parts[:-1]
    cur = Path(root)
    for i, p in enumerate(parts):
        cur = cur / p
        if cur.is_dir():
            continue
        cur.mkdir()
        meta = _lookup(image, "/" + "/".join(parts[: i + 1]))
        if meta is not None and stat.S_ISDIR(meta[0]):
            mode, uid, gid, mtime = meta
            os.chmod(cur, stat.S_IMODE(mode))
            _chown(cur, uid, gid)
            os.utime(cur, ns=(mtime, mtime))
        else:
            os.chmod(cur, 0o755)
            if owner is not None and i == len(parts) - 1:
                _chown(cur, *owner)


def _chown(p: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(p, uid, gid, follow_symlinks=False)


def _copy_file(src: Path, dst: Path, uid: int, gid: int, mode: int | None) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    shutil.copy2(src, dst)
    _chown(dst, uid, gid)
    if mode is not None:
        os.chmod(dst, mode)


def _copy_tree(src: Path, dst: Path, uid: int, gid: int, mode: int | None,
               skip: Callable[[Path], bool]) -> None:
    """The folder's content (not the folder itself) into dst, symlinks kept as links."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(src)):
        s, d = src / name, dst / name
        if skip(s):
            continue
        if s.is_symlink():
            os.symlink(os.readlink(s), d)
            _chown(d, uid, gid)
        elif s.is_dir():
            d.mkdir(exist_ok=True)
            shutil.copystat(s, d)
            _copy_tree(s, d, uid, gid, mode, skip)
            _chown(d, uid, gid)
            if mode is not None:
                os.chmod(d, mode)
        elif s.is_file():
            _copy_file(s, d, uid, gid, mode)
        # Sockets, fifos and devices in a build context are not copied.


def _dockerignore(context: Path) -> Callable[[str], bool]:
    """A predicate for context-relative paths excluded by ``.dockerignore``.

    Docker's rules: patterns relative to the context root, ``*``/``?`` within one path
    element, ``**`` across any number, ``!`` re-includes; the last matching line wins and a
    pattern that matches a folder excludes what is under it.
    """
    try:
        lines = (context / ".dockerignore").read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return lambda rel: False
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
                if pat.startswith("/", i):
                    rx, i = rx + "(?:/|)", i + 1
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        rules.append((neg, re.compile(rx + "(?:/.*)?")))

    def ignored(rel: str) -> bool:
        out = False
        for neg, rx in rules:
            if rx.fullmatch(rel):
                out = not neg
        return out

    return ignored


def _tree_digest(root: Path) -> str:
    """What decides a COPY layer: names, types, modes, owners, link targets, bytes."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                h.update(b"\0")
    return "sha256:" + h.hexdigest()


def _is_archive(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(262)
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def _read_image_file(image: Image | None, path: str) -> str:
    if image is None or _lookup(image, path) is None:
        return ""
    for d in reversed(image.layer_dirs):
        p = os.path.join(d, path.lstrip("/"))
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, errors="replace") as f:
                return f.read()
    return ""


def _resolve_id(image: Image | None, db: str, name: str, line: int) -> int:
    if name.isdigit():
        return int(name)
    for row in _read_image_file(image, db).splitlines():
        f = row.split(":")
        if len(f) >= 3 and f[0] == name and f[2].isdigit():
            return int(f[2])
    raise df.error(line, f"unable to find {'user' if 'passwd' in db else 'group'} {name!r} "
                         f"in the image's {db}")


def _primary_gid(image: Image | None, user: str) -> int:
    for row in _read_image_file(image, "/etc/passwd").splitlines():
        f = row.split(":")
        if len(f) >= 4 and f[0] == user and f[3].isdigit():
            return int(f[3])
    return 0
