"""The engine's gRPC servicer, and the asyncio side of the engine.

Servicers only translate: proto in, one engine call (in a thread: the engine blocks on the
kernel and the disk), proto out. What needs the event loop lives here too: watching shims
for exits (pidfds, no polling), stop's grace period, and streaming logs and exec output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pyswarm.common import errors
from pyswarm.common.rpc import user_errors
from pyswarm.proto import engine_pb2 as pb
from pyswarm.proto import engine_pb2_grpc as pb_grpc
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.logs import LogLine, LogReader
from pyswarm.worker.engine.records import ContainerRecord

T = TypeVar("T")

VERSION = "0.1.0"
API_VERSION = "1"
DEFAULT_STOP_TIMEOUT = 10  # seconds between the stop signal and SIGKILL, Docker's default
LOG_POLL = 0.05  # seconds between looks at a followed log file

def to_pb(record: ContainerRecord) -> pb.Container:
    return pb.Container(
        id=record.id, name=record.name, image=record.image, image_id=record.image_id,
        command=record.command, created=record.created, state=record.state, pid=record.pid,
        exit_code=record.exit_code, oom_killed=record.oom_killed,
        started_at=record.started_at, finished_at=record.finished_at,
        ports=[pb.PortBinding(host_ip=p.host_ip, host_port=p.host_port,
                              container_port=p.container_port, proto=p.proto)
               for p in record.ports],
        ip_address=record.ip_address, network=record.network,
        mounts=[pb.MountPoint(type=m.type, source=m.source, destination=m.destination,
                              read_only=m.read_only) for m in record.mounts],
        hostname=record.hostname, error=record.error, labels=record.labels,
        memory_bytes=record.memory_bytes, cpus=record.cpus, pids_limit=record.pids_limit,
        env=record.env, workdir=record.workdir, user=record.user,
        auto_remove=record.auto_remove,
        overlays=[pb.OverlayAttachment(network_id=o.network_id, address=o.address)
                  for o in record.overlays],
    )


def image_pb(image: Any) -> pb.Image:
    return pb.Image(
        id=image.id, repo_tags=list(image.repo_tags), size=image.size, created=image.created,
        config_json=json.dumps(image.config), layers=len(image.layer_dirs),
    )


def log_pb(line: LogLine) -> pb.LogEntry:
    return pb.LogEntry(stream=line.stream, data=line.data, time=line.time)


class ExitWatcher:
    """Learns of each container's exit from its shim's pidfd and finishes it off."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._exited: dict[str, asyncio.Future[ContainerRecord | None]] = {}

    def _future(self, cid: str) -> asyncio.Future[ContainerRecord | None]:
        if cid not in self._exited:
            self._exited[cid] = asyncio.get_running_loop().create_future()
        return self._exited[cid]

    def watch(self, cid: str) -> None:
        loop = asyncio.get_running_loop()
        self._future(cid)
        fd = self.engine.shim_pidfd(cid)
        if fd is None:  # it is gone already
            loop.create_task(self._finish(cid))
            return

        def fired() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            loop.create_task(self._finish(cid))

        loop.add_reader(fd, fired)

    async def _finish(self, cid: str) -> None:
        try:
            record = await asyncio.to_thread(self.engine.on_exit, cid)
        except Exception as exc:  # never leave a waiter hanging
            record = None
            print(f"pyswarm: finishing container {cid[:12]} failed: {exc}", flush=True)
        future = self._exited.pop(cid, None)
        if future is not None and not future.done():
            future.set_result(record)

    async def wait(self, record: ContainerRecord) -> ContainerRecord:
        """Until the container has exited; the final record (also when --rm removed it)."""
        if record.state != "running":
            return record
        done = await asyncio.shield(self._future(record.id))
        return done or record


class EngineServicer(pb_grpc.EngineServicer):
    def __init__(self, engine: Engine, watcher: ExitWatcher, cgroup_driver: str) -> None:
        self.engine = engine
        self.watcher = watcher
        self.cgroup_driver = cgroup_driver

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    @user_errors
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version=VERSION, api_version=API_VERSION,
                                  cgroup_driver=self.cgroup_driver,
                                  root=str(self.engine.cfg.root))

    # ---- containers ----------------------------------------------------------------------

    @user_errors
    async def CreateContainer(self, request: pb.CreateContainerRequest,
                              context: Any) -> pb.Container:
        record = await self._run(self.engine.create, request)
        self.watcher.watch(record.id)
        return to_pb(record)

    @user_errors
    async def RunContainer(self, request: pb.CreateContainerRequest,
                           context: Any) -> AsyncIterator[pb.RunOutput]:
        record = await self._run(self.engine.create, request)
        # Open the log before the exit watcher may remove the container (--rm).
        reader = LogReader(self.engine.bundle(record.id))
        try:
            first = reader.initial()
        finally:
            self.watcher.watch(record.id)  # whatever happens, its exit is handled
        yield pb.RunOutput(container=to_pb(record))
        try:
            for line in first:
                yield pb.RunOutput(log=log_pb(line))
            final = asyncio.ensure_future(self.watcher.wait(record))
            while True:
                done = await _sleep_or(final, LOG_POLL)
                for line in reader.poll():
                    yield pb.RunOutput(log=log_pb(line))
                if done:
                    break
            ended = await final
        finally:
            reader.close()
        yield pb.RunOutput(exit=pb.WaitResponse(exit_code=ended.exit_code,
                                                oom_killed=ended.oom_killed, error=ended.error))

    @user_errors
    async def ListContainers(self, request: pb.ListContainersRequest,
                             context: Any) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(
            containers=[to_pb(r) for r in self.engine.list(all=request.all)])

    @user_errors
    async def InspectContainer(self, request: pb.ContainerRef, context: Any) -> pb.Container:
        return to_pb(self.engine.resolve(request.id))

    @user_errors
    async def WaitContainer(self, request: pb.ContainerRef, context: Any) -> pb.WaitResponse:
        ended = await self.watcher.wait(self.engine.resolve(request.id))
        return pb.WaitResponse(exit_code=ended.exit_code, oom_killed=ended.oom_killed,
                               error=ended.error)

    @user_errors
    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> pb.Container:
        record = self.engine.resolve(request.id)
        if record.state != "running":
            return to_pb(record)
        timeout = request.timeout_seconds if request.timeout_seconds >= 0 else DEFAULT_STOP_TIMEOUT
        ended = asyncio.ensure_future(self.watcher.wait(record))
        await self._run(self.engine.kill, record.id, record.stop_signal)
        try:
            return to_pb(await asyncio.wait_for(asyncio.shield(ended), timeout))
        except TimeoutError:
            with contextlib.suppress(errors.Conflict):
                await self._run(self.engine.kill, record.id, signal.SIGKILL)
            return to_pb(await ended)

    @user_errors
    async def KillContainer(self, request: pb.KillContainerRequest, context: Any) -> pb.Container:
        from pyswarm.common.units import parse_signal

        sig = parse_signal(request.signal) if request.signal else signal.SIGKILL
        record = await self._run(self.engine.kill, request.id, sig)
        if sig == signal.SIGKILL:
            record = await self.watcher.wait(record)
        return to_pb(record)

    @user_errors
    async def RemoveContainer(self, request: pb.RemoveContainerRequest,
                              context: Any) -> pb.RemoveContainerResponse:
        record = self.engine.resolve(request.id)
        if record.state == "running" and request.force:
            with contextlib.suppress(errors.Conflict):
                await self._run(self.engine.kill, record.id, signal.SIGKILL)
            await self.watcher.wait(record)
        cid = await self._run(self.engine.remove, record.id, request.force, request.volumes)
        return pb.RemoveContainerResponse(id=cid)

    @user_errors
    async def Logs(self, request: pb.LogsRequest, context: Any) -> AsyncIterator[pb.LogEntry]:
        record = self.engine.resolve(request.id)
        reader = LogReader(self.engine.bundle(record.id))
        wanted = {s for s, on in (("stdout", request.stdout), ("stderr", request.stderr)) if on}
        wanted = wanted or {"stdout", "stderr"}
        try:
            for line in await self._run(reader.initial, request.tail):
                if line.stream in wanted:
                    yield log_pb(line)
            if not request.follow:
                return
            final = asyncio.ensure_future(self.watcher.wait(record))
            while True:
                done = await _sleep_or(final, LOG_POLL)
                for line in reader.poll():
                    if line.stream in wanted:
                        yield log_pb(line)
                if done:
                    return
        finally:
            reader.close()

    @user_errors
    async def Exec(self, request_iterator: AsyncIterator[pb.ExecInput],
                   context: Any) -> AsyncIterator[pb.ExecOutput]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("start"):
            raise errors.InvalidArgument("exec: the first message must be `start`")
        record, process = self.engine.exec_process(first.start)
        proc = await self._run(self.engine.runtime.exec, str(self.engine.bundle(record.id)),
                               process, stdin=first.start.stdin)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()

        def readable(fd: int, kind: str) -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(fd)
                os.close(fd)
            queue.put_nowait((kind, data or None))

        for fd, kind in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            os.set_blocking(fd, False)
            loop.add_reader(fd, readable, fd, kind)

        async def feed_stdin() -> None:
            fd = proc.stdin
            try:
                async for message in request_iterator:
                    if fd is None:
                        continue
                    if message.HasField("stdin"):
                        await asyncio.to_thread(_write_all, fd, message.stdin)
                    elif message.close_stdin:
                        break
            except (BrokenPipeError, OSError):
                pass
            finally:
                if fd is not None:
                    os.close(fd)

        feeder = loop.create_task(feed_stdin())
        try:
            open_streams = 2
            while open_streams:
                kind, data = await queue.get()
                if data is None:
                    open_streams -= 1
                elif kind == "stdout":
                    yield pb.ExecOutput(stdout=data)
                else:
                    yield pb.ExecOutput(stderr=data)
            code = await asyncio.to_thread(proc.wait)
        finally:
            feeder.cancel()
        yield pb.ExecOutput(exit_code=code)

    @user_errors
    async def Commit(self, request: pb.CommitRequest, context: Any) -> pb.Image:
        return image_pb(await self._run(self.engine.commit, request))

    # ---- images --------------------------------------------------------------------------

    @user_errors
    async def ListImages(self, request: pb.ListImagesRequest,
                         context: Any) -> pb.ListImagesResponse:
        images = await self._run(self.engine.images.list)
        return pb.ListImagesResponse(images=[image_pb(i) for i in images])

    @user_errors
    async def InspectImage(self, request: pb.ImageRef, context: Any) -> pb.Image:
        return image_pb(await self._run(self.engine.images.get, request.ref))

    @user_errors
    async def RemoveImage(self, request: pb.RemoveImageRequest,
                          context: Any) -> pb.RemoveImageResponse:
        removed = await self._run(self.engine.images.remove, request.ref, request.force)
        untagged = [r for r in removed if not r.startswith("sha256:")]
        deleted = [r for r in removed if r.startswith("sha256:")]
        return pb.RemoveImageResponse(untagged=untagged, deleted=deleted)

    @user_errors
    async def TagImage(self, request: pb.TagImageRequest, context: Any) -> pb.Image:
        await self._run(self.engine.images.tag, request.source, request.target)
        return image_pb(await self._run(self.engine.images.get, request.target))

    @user_errors
    async def LoadImage(self, request: pb.LoadImageRequest,
                        context: Any) -> AsyncIterator[pb.Progress]:
        from pathlib import Path

        async for item in _with_progress(
            lambda progress: self.engine.images.load(Path(request.path), progress)
        ):
            if isinstance(item, str):
                yield pb.Progress(line=item)
            else:
                yield pb.Progress(line="", refs=list(item))

    @user_errors
    async def SaveImage(self, request: pb.SaveImageRequest,
                        context: Any) -> AsyncIterator[pb.Progress]:
        from pathlib import Path

        if not request.refs:
            raise errors.InvalidArgument("save needs at least one image")
        await self._run(self.engine.images.save, list(request.refs), Path(request.path))
        yield pb.Progress(line=f"saved {', '.join(request.refs)}")

    @user_errors
    async def BuildImage(self, request: pb.BuildImageRequest,
                         context: Any) -> AsyncIterator[pb.Progress]:
        from pyswarm.worker.engine.build_runner import build

        async for message in _image_progress(
                lambda progress: build(self.engine, request, progress)):
            yield message

    @user_errors
    async def PullImage(self, request: pb.ImageRef, context: Any) -> AsyncIterator[pb.Progress]:
        async for message in _image_progress(
                lambda progress: self.engine.images.pull(request.ref, progress)):
            yield message

    @user_errors
    async def PushImage(self, request: pb.ImageRef, context: Any) -> AsyncIterator[pb.Progress]:
        async for item in _with_progress(
            lambda progress: self.engine.images.push(request.ref, progress)
        ):
            if isinstance(item, str):
                yield pb.Progress(line=item)

    # ---- volumes -------------------------------------------------------------------------

    def _volume_pb(self, volume: Any) -> pb.Volume:
        return pb.Volume(name=volume.name, mountpoint=str(volume.mountpoint),
                         created=volume.created, used_by=self.engine.volume_users(volume.name))

    @user_errors
    async def ListVolumes(self, request: pb.ListVolumesRequest,
                          context: Any) -> pb.ListVolumesResponse:
        return pb.ListVolumesResponse(
            volumes=[self._volume_pb(v) for v in self.engine.volumes.list()])

    @user_errors
    async def CreateVolume(self, request: pb.CreateVolumeRequest, context: Any) -> pb.Volume:
        volume, _ = self.engine.volumes.create(request.name)
        return self._volume_pb(volume)

    @user_errors
    async def RemoveVolume(self, request: pb.RemoveVolumeRequest,
                           context: Any) -> pb.RemoveVolumeResponse:
        users = self.engine.volume_users(request.name)
        await self._run(self.engine.volumes.remove, request.name, users, request.force)
        return pb.RemoveVolumeResponse(name=request.name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]


async def _sleep_or(future: asyncio.Future[Any], seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``future`` finished meanwhile."""
    done, _ = await asyncio.wait({future}, timeout=seconds)
    return bool(done)


async def _image_progress(work: Callable[[Callable[[str], None]], Any],
                          ) -> AsyncIterator[pb.Progress]:
    """Progress lines of work that ends with an image, then the image's id and tags."""
    async for item in _with_progress(work):
        if isinstance(item, str):
            yield pb.Progress(line=item)
        else:
            yield pb.Progress(image_id=item.id, refs=list(item.repo_tags))


async def _with_progress(work: Callable[[Callable[[str], None]], T]) -> AsyncIterator[str | T]:
    """Run blocking ``work(progress)`` in a thread; yield its progress lines, then its result."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def progress(line: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, line)

    task = asyncio.ensure_future(asyncio.to_thread(work, progress))
    while not task.done() or not queue.empty():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
    yield task.result()
