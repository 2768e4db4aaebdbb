from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_fixtures import Daemon, build_base_image, cleanup, engine_env


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One engine daemon for the session, with busybox:latest built by `image build`."""
    base: Path = tmp_path_factory.mktemp("engine")
    d = Daemon(base, engine_env(base))
    try:
        d.start()
        build_base_image(d)
        yield d
    finally:
        cleanup(d)
