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
]


# Trailing metadata of a follower manager's refusal of a dispatcher call: the leader's
# ADDR:PORT, where the node's agent goes next.
LEADER_KEY = "pyswarm-leader"


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
                await context.abort(status_for(exc), str(exc))

        return unary

    @functools.wraps(method)
    async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in method(self, request, context):
                yield item
        except errors.PyswarmError as exc:
            await context.abort(status_for(exc), str(exc))

    return streaming


