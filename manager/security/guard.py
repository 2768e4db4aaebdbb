"""The gRPC side of authz: a server interceptor that checks every call on the TLS port
against the policy (authz.authorize) before the servicer runs (a node's session: its first
message, which names the node; the rest are that node's heartbeats).

A refusal is PERMISSION_DENIED with the policy's message, and is logged with the caller's
node id: a worker trying the control API, or a removed node knocking, is worth seeing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pyswarm.common.rpc import SESSION_METHOD, abort
from pyswarm.manager.manager import Manager
from pyswarm.manager.security import authz
from pyswarm.manager.security.ca import PermissionDenied


def _log(message: str) -> None:
    print(f"pyswarm manager: {message}", flush=True)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, manager: Callable[[], Manager | None]) -> None:
        self._manager = manager

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if handler.request_streaming:
            if method == SESSION_METHOD and handler.response_streaming:
                return self._checked_session(method, handler)
            return None  # no other such RPC is served here: refused as unknown, never unchecked
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._check(method, request, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        stream = handler.unary_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check(method, request, context)
            async for item in stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            streaming, handler.request_deserializer, handler.response_serializer)

    def _checked_session(self, method: str, handler: Any) -> Any:
        """A node's session (Dispatcher/Session): its first message is checked before the
        servicer reads it, and may only open a session for the certificate's own node,
        which must still be a member. Its later messages are that node's heartbeats (the
        servicer takes nothing else). The dispatcher ends the session of a node removed
        meanwhile."""
        inner = handler.stream_stream

        async def streaming(requests: AsyncIterator[Any],
                            context: grpc.aio.ServicerContext) -> Any:
            caller = authz.caller_of(dict(context.auth_context()))
            requests = aiter(requests)
            first = await anext(requests, None)
            if first is None:
                return
            await self._authorize(method, caller, first, context)
            async for item in inner(_Prepended(first, requests), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            streaming, handler.request_deserializer, handler.response_serializer)

    async def _check(self, method: str, request: Any,
                     context: grpc.aio.ServicerContext) -> authz.Caller | None:
        caller = authz.caller_of(dict(context.auth_context()))
        await self._authorize(method, caller, request, context)
        return caller

    async def _authorize(self, method: str, caller: authz.Caller | None, request: Any,
                         context: grpc.aio.ServicerContext) -> None:
        """Refuse the call (PERMISSION_DENIED) unless the policy lets `caller` make it."""
        manager = self._manager()
        if manager is None:
            return  # the servicers answer "not a manager"
        store = manager.store
        try:
            authz.authorize(method, caller, request, manager.identity.cluster_id,
                            lambda node_id: store.view().get("node", node_id) is not None)
        except PermissionDenied as exc:
            # Calls reach gRPC through the port's router (endpoint.py), so gRPC's own peer
            # address is a local socket: the certificate is what says who called.
            who = (f"node {caller.node_id} ({caller.role})" if caller else
                   "a peer without a node certificate")
            _log(f"refused {method.rpartition('.')[2]} from {who}: {exc}")
            await abort(context, exc, grpc.StatusCode.PERMISSION_DENIED)


class _Prepended:
    """`first`, then the rest of `requests`: the stream as the servicer would have read it
    (each later message straight from gRPC, not through another generator)."""

    def __init__(self, first: Any, requests: AsyncIterator[Any]) -> None:
        self._first: Any = first
        self._requests = requests

    def __aiter__(self) -> _Prepended:
        return self

    def __anext__(self) -> Awaitable[Any]:
        if self._first is None:
            return self._requests.__anext__()
        first, self._first = self._first, None
        return _now(first)


async def _now(value: Any) -> Any:
    return value
