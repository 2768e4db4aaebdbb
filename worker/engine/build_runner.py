"""Dockerfile builds on this engine: RUN steps run as real containers of this node.

The image builder (``worker/images/build.py``) decides what to run and packs layers; this
module is its ``StepRunner``: one container per RUN over the layers so far, on the node's
bridge (RUN steps have network, as in ``docker build``), its output streamed to the
build's progress as it is printed.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from pyswarm.proto import engine_pb2 as pb
from pyswarm.worker.engine.core import Engine
from pyswarm.worker.engine.logs import LogReader
from pyswarm.worker.images.build import StepResult
from pyswarm.worker.images.build import build as build_image
from pyswarm.worker.images.store import Image
from pyswarm.worker.runtime.spec import ContainerSpec, NetworkMode, ProcessSpec

POLL = 0.05  # seconds between looks at the step's output while it runs


class EngineStepRunner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root = engine.cfg.root / "build"

    def run_step(
        self, layers: Sequence[str], process: ProcessSpec, on_output: Callable[[str], None]
    ) -> StepResult:
        cid = secrets.token_hex(32)
        bundle = self.root / cid
        bundle.mkdir(parents=True)
        (bundle / "container.log").touch()
        runtime, network = self.engine.runtime, self.engine.network
        try:
            attachment = network.attach(cid)
            spec = ContainerSpec(
                id=cid, hostname=cid[:12], layers=tuple(layers), bundle_dir=str(bundle),
                process=process, network_mode=NetworkMode.BRIDGE,
                netns_path=attachment.netns_path, cgroup_parent="pyswarm-build",
            )
            reader = LogReader(bundle)
            reader.initial()
            runtime.create(spec)
            fd = runtime.shim_pidfd(str(bundle))
            try:
                while fd is not None and not select.select([fd], [], [], POLL)[0]:
                    for line in reader.poll():
                        on_output(line.data.decode(errors="replace").rstrip("\n"))
            finally:
                if fd is not None:
                    os.close(fd)
            for line in reader.poll():
                on_output(line.data.decode(errors="replace").rstrip("\n"))
            reader.close()
            state = runtime.state(str(bundle))
            code = state.exit_code if state.exit_code is not None else 255
        except BaseException:
            self._release(cid, bundle)
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        self._release(cid, bundle)
        return StepResult(
            exit_code=code,
            upper_dir=bundle / "upper",
            cleanup=lambda: shutil.rmtree(bundle, ignore_errors=True),
        )

    def _release(self, cid: str, bundle: Path) -> None:
        self.engine.runtime.delete(str(bundle))
        self.engine.network.detach(cid)


def build(engine: Engine, request: pb.BuildImageRequest, progress: Callable[[str], None]) -> Image:
    context = Path(request.context_dir)
    dockerfile = Path(request.dockerfile) if request.dockerfile else context / "Dockerfile"
    return build_image(
        engine.images,
        context,
        dockerfile,
        tags=list(request.tags),
        build_args=dict(request.build_args),
        runner=EngineStepRunner(engine),
        progress=progress,
        no_cache=request.no_cache,
    )
