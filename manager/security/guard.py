"""The gRPC side of authz: a server interceptor that checks every call on the TLS port
against the policy (authz.authorize) before the servicer runs (each message of a stream of
requests before the servicer reads it), and ends the session of a node removed while it is
connected.

A refusal is PERMISSION_DENIED with the policy's message, and is logged with the caller's
node id: a worker trying the control API, or a removed node knocking, is worth seeing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from pyswarm.common.rpc import SESSION_METHOD, abort
from pyswarm.manager.manager import Manager
from pyswarm.manager.security import authz
from pyswarm.manager.security.ca import PermissionDenied, removed


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
        if handler.stream_stream is not None:
            return self._checked_stream(method, handler)
        if handler.request_streaming:
            return None  # no such RPC is served here: refused as unknown, never unchecked
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._check(method, request, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        stream = handler.unary_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await self._check(method, request, context)
            items = stream(request, context)
            if method == SESSION_METHOD and caller is not None:
                items = self._until_removed(items, caller.node_id, context)
            async for item in items:
                yield item

        return grpc.unary_stream_rpc_method_handler(
            streaming, handler.request_deserializer, handler.response_serializer)

    def _checked_stream(self, method: str, handler: Any) -> Any:
        """A stream of requests (Dispatcher/Heartbeats) is checked a message at a time: each
        one may only act for the certificate's own node, which must still be a member."""
        inner = handler.stream_stream

        async def streaming(requests: AsyncIterator[Any],
                            context: grpc.aio.ServicerContext) -> Any:
            caller = authz.caller_of(dict(context.auth_context()))

            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    await self._authorize(method, caller, request, context)
                    yield request

            async for item in inner(checked(), context):
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

    async def _until_removed(self, items: AsyncIterator[Any], node_id: str,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The session's messages, until the node is removed from the store: then the
        session ends with PERMISSION_DENIED, which the node's agent reports."""
        manager = self._manager()
        assert manager is not None
        dispatcher = manager.dispatcher
        if dispatcher is None:  # a follower: the servicer refuses (servicers._redirects)
            async for item in items:
                yield item
            return
        gone = asyncio.create_task(dispatcher.removed(node_id))
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(items))
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if step.done():
                    try:
                        yield step.result()
                    except StopAsyncIteration:
                        return
                    continue
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                _log(f"ended the session of node {node_id}: it was removed from the swarm")
                await abort(context, PermissionDenied(removed(node_id)),
                            grpc.StatusCode.PERMISSION_DENIED)
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            if step is not None:
                # The stream ended (the node went) while a message was awaited: that
                # step ends here, and its outcome is retrieved, not left to the loop.
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration,
                                         Exception):
                    await step
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
