"""Image and volume commands: image ls|build|load|save|pull|push|rm|inspect|tag, volume ..."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pyswarm.cli import render
from pyswarm.cli.client import CLIError, connect, explain


def _pb() -> Any:
    from pyswarm.proto import engine_pb2

    return engine_pb2


def _stream_progress(stream: Any) -> Any:
    """Print progress lines as they arrive; return the last message (it holds the result)."""
    last = None
    try:
        for message in stream:
            if message.line:
                print(message.line, flush=True)
            last = message
    except Exception as exc:
        raise explain(exc) from None
    return last


def _split_tag(ref: str) -> tuple[str, str]:
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, "latest"
    return name, tag


def cmd_ls(a: argparse.Namespace) -> int:
    stub = connect()
    try:
        images = stub.ListImages(_pb().ListImagesRequest()).images
    except Exception as exc:
        raise explain(exc) from None
    rows = []
    for image in sorted(images, key=lambda i: i.created, reverse=True):
        for ref in image.repo_tags or ["<none>:<none>"]:
            repo, tag = _split_tag(ref) if ref != "<none>:<none>" else ("<none>", "<none>")
            rows.append((repo, tag, image))
    if a.quiet:
        for _, _, image in rows:
            print(image.id.removeprefix("sha256:")[:12])
    elif a.format == "json":
        render.json_lines(
            {"repository": repo, "tag": tag, "id": image.id, "created": image.created,
             "size": image.size, "layers": image.layers} for repo, tag, image in rows)
    else:
        render.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                     ([repo, tag, image.id.removeprefix("sha256:")[:12], render.ago(image.created),
                       _size(image.size)] for repo, tag, image in rows))
    return 0


def _size(n: int) -> str:
    from pyswarm.common.units import format_size

    return format_size(n)


def cmd_build(a: argparse.Namespace) -> int:
    context = Path(a.context).resolve()
    if not context.is_dir():
        raise CLIError(f"unable to prepare context: path {a.context!r} is not a folder")
    dockerfile = Path(a.file).resolve() if a.file else context / "Dockerfile"
    if not dockerfile.is_file():
        raise CLIError(f"cannot find the Dockerfile: {dockerfile}")
    args = {}
    for item in a.build_arg:
        key, sep, value = item.partition("=")
        args[key] = value if sep else os.environ.get(key, "")
    stub = connect()
    last = _stream_progress(stub.BuildImage(_pb().BuildImageRequest(
        context_dir=str(context), dockerfile=str(dockerfile), tags=a.tag, build_args=args,
        no_cache=a.no_cache)))
    if last is None or not last.image_id:
        raise CLIError("the build ended without an image")
    print(f"Successfully built {last.image_id.removeprefix('sha256:')[:12]}")
    for tag in a.tag:
        print(f"Successfully tagged {tag}")
    return 0


def cmd_load(a: argparse.Namespace) -> int:
    stub = connect()
    tmp = None
    if a.input:
        path = Path(a.input).resolve()
        if not path.is_file():
            raise CLIError(f"open {a.input}: no such file")
    else:
        if sys.stdin.isatty():
            raise CLIError("requested load from stdin, but stdin is empty: use -i FILE or < FILE")
        tmp = tempfile.NamedTemporaryFile(prefix="pyswarm-load-", suffix=".tar", delete=False)
        shutil.copyfileobj(sys.stdin.buffer, tmp)
        tmp.close()
        path = Path(tmp.name)
    try:
        last = _stream_progress(stub.LoadImage(_pb().LoadImageRequest(path=str(path))))
    finally:
        if tmp:
            os.unlink(tmp.name)
    for ref in (last.refs if last else []):
        print(("Loaded image: " if not ref.startswith("sha256:") else "Loaded image ID: ") + ref)
    return 0


def cmd_save(a: argparse.Namespace) -> int:
    stub = connect()
    if a.output:
        target = Path(a.output).resolve()
        _stream_progress(stub.SaveImage(_pb().SaveImageRequest(refs=a.images, path=str(target))))
        return 0
    if sys.stdout.isatty():
        raise CLIError("refusing to write an archive to a terminal: use -o FILE or > FILE")
    with tempfile.TemporaryDirectory(prefix="pyswarm-save-") as tmp:
        target = Path(tmp) / "image.tar"
        last = stub.SaveImage(_pb().SaveImageRequest(refs=a.images, path=str(target)))
        try:
            for _ in last:
                pass
        except Exception as exc:
            raise explain(exc) from None
        with open(target, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    return 0


def cmd_pull(a: argparse.Namespace) -> int:
    last = _stream_progress(connect().PullImage(_pb().ImageRef(ref=a.image)))
    if last is not None and last.image_id:
        print(f"Digest: {last.image_id}")
    return 0


def cmd_push(a: argparse.Namespace) -> int:
    _stream_progress(connect().PushImage(_pb().ImageRef(ref=a.image)))
    return 0


def cmd_rm(a: argparse.Namespace) -> int:
    stub = connect()
    failed = False
    for ref in a.images:
        try:
            result = stub.RemoveImage(_pb().RemoveImageRequest(ref=ref, force=a.force))
        except Exception as exc:
            print(explain(exc), file=sys.stderr)
            failed = True
            continue
        for tag in result.untagged:
            print(f"Untagged: {tag}")
        for image_id in result.deleted:
            print(f"Deleted: {image_id}")
    return 1 if failed else 0


def cmd_inspect(a: argparse.Namespace) -> int:
    stub = connect()
    out, failed = [], False
    for ref in a.images:
        try:
            image = stub.InspectImage(_pb().ImageRef(ref=ref))
        except Exception as exc:
            print(explain(exc), file=sys.stderr)
            failed = True
            continue
        config = json.loads(image.config_json or "{}")
        out.append({"Id": image.id, "RepoTags": list(image.repo_tags), "Created": image.created,
                    "Size": image.size, "Config": config.get("config", {}),
                    "RootFS": config.get("rootfs", {}), "History": config.get("history", [])})
    print(json.dumps(out, indent=4))
    return 1 if failed else 0


def cmd_tag(a: argparse.Namespace) -> int:
    try:
        connect().TagImage(_pb().TagImageRequest(source=a.source, target=a.target))
    except Exception as exc:
        raise explain(exc) from None
    return 0


def cmd_volume_ls(a: argparse.Namespace) -> int:
    try:
        volumes = connect().ListVolumes(_pb().ListVolumesRequest()).volumes
    except Exception as exc:
        raise explain(exc) from None
    if a.format == "json":
        render.json_lines({"name": v.name, "driver": "local", "mountpoint": v.mountpoint,
                           "created": v.created, "used_by": list(v.used_by)} for v in volumes)
    elif a.quiet:
        for v in volumes:
            print(v.name)
    else:
        render.table(["DRIVER", "VOLUME NAME"], (["local", v.name] for v in volumes))
    return 0


def cmd_volume_create(a: argparse.Namespace) -> int:
    try:
        print(connect().CreateVolume(_pb().CreateVolumeRequest(name=a.name or "")).name)
    except Exception as exc:
        raise explain(exc) from None
    return 0


def cmd_volume_rm(a: argparse.Namespace) -> int:
    stub = connect()
    failed = False
    for name in a.volumes:
        try:
            stub.RemoveVolume(_pb().RemoveVolumeRequest(name=name, force=a.force))
            print(name)
        except Exception as exc:
            print(explain(exc), file=sys.stderr)
            failed = True
    return 1 if failed else 0


def register(sub: Any) -> None:
    image = sub.add_parser("image", help="manage images",
                           description="Manage the images of this node.")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)

    p = isub.add_parser("ls", help="list images")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ls)

    p = isub.add_parser("build", help="build an image from a Dockerfile",
                        description="Build an image from the Dockerfile in CONTEXT. RUN steps "
                        "run as containers of this node; unchanged steps come from the cache.",
                        epilog="example: pyswarm image build -t web:1 examples/images/busybox")
    p.add_argument("-t", "--tag", action="append", default=[], help="NAME[:TAG] (repeatable)")
    p.add_argument("-f", "--file", default="", help="the Dockerfile (default CONTEXT/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step")
    p.add_argument("context")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser("load", help="load images from a docker-save or OCI archive")
    p.add_argument("-i", "--input", default="", help="the archive (default: stdin)")
    p.set_defaults(func=cmd_load)

    p = isub.add_parser("save", help="write images to an archive docker load accepts")
    p.add_argument("-o", "--output", default="", help="the file (default: stdout)")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_save)

    p = isub.add_parser("pull", help="pull an image from a registry")
    p.add_argument("image")
    p.set_defaults(func=cmd_pull)

    p = isub.add_parser("push", help="push an image to a registry")
    p.add_argument("image")
    p.set_defaults(func=cmd_push)

    p = isub.add_parser("rm", help="remove images")
    p.add_argument("-f", "--force", action="store_true", help="even if a container uses it")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = isub.add_parser("inspect", help="show images' details as JSON")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_inspect)

    p = isub.add_parser("tag", help="give an image another name")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=cmd_tag)

    volume = sub.add_parser("volume", help="manage volumes",
                            description="Named volumes outlive the containers that use them.")
    vsub = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    p = vsub.add_parser("ls", help="list volumes")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_volume_ls)
    p = vsub.add_parser("create", help="create a volume")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_volume_create)
    p = vsub.add_parser("rm", help="remove volumes (not while a container uses them)")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("volumes", nargs="+")
    p.set_defaults(func=cmd_volume_rm)
