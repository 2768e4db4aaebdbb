"""The committed generated code is what the .proto files produce."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "codegen.py"), "--check"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_generated_modules_import_under_the_namespace() -> None:
    from pyswarm.proto import engine_pb2, engine_pb2_grpc

    assert engine_pb2.DESCRIPTOR.package == "pyswarm.engine.v1"
    assert hasattr(engine_pb2_grpc, "EngineStub")
