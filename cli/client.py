"""The CLI's connection to the local daemon, and turning its errors into messages.

gRPC is imported here, lazily: commands that do not talk to a daemon (``--help``,
``daemon``) never pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """An error for the user; ``code`` is the exit status (125 like docker's engine errors)."""

    def __init__(self, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.code = code


def socket_path() -> Path:
    return Path(os.environ.get("PYSWARM_RUN", "/run/pyswarm")) / "pyswarm.sock"


def _not_running() -> CLIError:
    return CLIError(
        f"Cannot connect to the pyswarm daemon at unix://{socket_path()}. "
        f"Is the daemon running?\nStart it with: sudo pyswarm daemon -d"
    )


def _channel() -> Any:
    """A channel on the local daemon's socket, after checking it is there and ours to use."""
    sock = socket_path()
    if not sock.exists():
        raise _not_running()
    if not os.access(sock, os.R_OK | os.W_OK):
        raise CLIError(f"permission denied on {sock}: the pyswarm socket is root-only; use sudo")
    import grpc

    # Listings of a large cluster exceed gRPC's 4 MiB default (10,000 tasks are ~25 MB).
    return grpc.insecure_channel(f"unix://{sock}", options=[
        ("grpc.max_receive_message_length", 1 << 30)])


def connect() -> Any:
    """An EngineStub on the local daemon's socket."""
    from pyswarm.proto import engine_pb2_grpc

    return engine_pb2_grpc.EngineStub(_channel())


def explain(exc: Exception) -> CLIError:
    """A grpc.RpcError as the daemon's message (docker's 'Error response from daemon')."""
    import grpc

    from pyswarm.common.rpc import answered

    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        if (code == grpc.StatusCode.UNAVAILABLE and not answered(exc)
                and _transport_failure(exc.details() or "")):
            return _not_running()
        return CLIError(f"Error response from daemon: {exc.details()}")
    return CLIError(str(exc))


def _transport_failure(details: str) -> bool:
    """UNAVAILABLE from the connection itself (no daemon). A daemon's own answers are told
    apart first, by their mark (common.rpc.answered): their message may quote these words
    about a connection of the daemon's own, to an etcd member or another manager."""
    return any(s in details for s in ("failed to connect", "Socket closed", "Connection reset",
                                      "connections to all backends failing", "Broken pipe"))


def control() -> Any:
    """A ControlStub (the cluster API) on the same local socket as the engine."""
    from pyswarm.proto import cluster_pb2_grpc

    return cluster_pb2_grpc.ControlStub(_channel())
