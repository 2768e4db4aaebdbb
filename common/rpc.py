"""Errors across gRPC: a PyswarmError raised by a servicer becomes a status code with the
user's message; clients show the message as it is."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import grpc

from pyswarm.common import errors

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.CorruptData, grpc.StatusCode.DATA_LOSS),
    (errors.RuntimeFailure, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]


# HTTP/2 flow control for the connections between nodes and managers, on both ends: a
# fixed stream window of 4 MiB instead of gRPC's default of probing the bandwidth-delay
# product. The probe sends a PING (and gets its ACK, and often a WINDOW_UPDATE) for the
# DATA it receives, so every heartbeat crossed the connection twice more; at a thousand
# heartbeats a second that was about a third of the manager's CPU at rest (a unary call
# over TLS: 0.29 cores for 500 calls/s with the probe, 0.18 without). 4 MiB in flight is
# what the probe grows to for a NetworkState, without the probing; a 100 MiB stream moves
# as fast over loopback with either.
FLOW_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4 << 20)]

# The node's session stream (guard.py checks its first message; the dispatcher ends it
# when the node is removed; the simulated nodes open it with a deserializer of their own).
SESSION_METHOD = "/pyswarm.cluster.v1.Dispatcher/Session"

# Trailing metadata of a follower manager's refusal of a dispatcher call: the leader's
# ADDR:PORT, where the node's agent goes next.
LEADER_KEY = "pyswarm-leader"
# Trailing metadata of every error a pyswarm servicer raises on purpose: the error's class.
# A client tells such an answer from a failed connection by it, never by the message's
# words (a store error may quote gRPC's own "failed to connect" about an etcd member).
ERROR_KEY = "pyswarm-error"


def answered(exc: grpc.RpcError) -> bool:
    """Whether the status came from a pyswarm servicer rather than from the transport."""
    metadata = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    return any(key == ERROR_KEY for key, _ in metadata or ())


async def abort(context: grpc.aio.ServicerContext, exc: Exception, code: grpc.StatusCode,
                *metadata: tuple[str, str]) -> None:
    """End the call with `code` and the error's message, marked as pyswarm's own answer."""
    await context.abort(code, str(exc),
                        trailing_metadata=((ERROR_KEY, type(exc).__name__), *metadata))


def status_for(exc: errors.PyswarmError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def user_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PyswarmError raised by the engine into a gRPC status with its message."""
    if not inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(self, request, context)
            except errors.PyswarmError as exc:
                await abort(context, exc, status_for(exc))

        return unary

    @functools.wraps(method)
    async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in method(self, request, context):
                yield item
        except errors.PyswarmError as exc:
            await abort(context, exc, status_for(exc))

    return streaming


