"""Requests whose bytes are not the method's message: refused as bad input, INVALID_ARGUMENT.

grpc.aio answers a request that its deserializer cannot decode with UNKNOWN and the
exception's class and text ("Unexpected <class '...DecodeError'>: ..."): the status
of an unhandled exception, and a glimpse of the internals. `RequestGuard` gives each
unary-unary handler a deserializer that never raises; an undecodable request then
reaches a behaviour that refuses it with INVALID_ARGUMENT and the reason
MALFORMED_REQUEST, like any other bad input. Nothing of the request is echoed back.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc

from node.api import REASON_METADATA_KEY

MALFORMED_REASON: Final = "MALFORMED_REQUEST"
GUARDED_METHODS_MAX: Final = 256
"""Most methods whose guarded handler is remembered (a server has a few dozen)."""


class _Undecodable:
    """Stands in for a request whose bytes did not decode."""


_UNDECODABLE: Final = _Undecodable()


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Put it last among the interceptors, so that it wraps the servicer's own handler."""

    def __init__(self) -> None:
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if (handler is None or handler.unary_unary is None
                or handler.request_deserializer is None
                or not inspect.iscoroutinefunction(handler.unary_unary)):
            return handler
        method = str(handler_call_details.method)
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guard(method, handler)
        if len(self._guarded) < GUARDED_METHODS_MAX or method in self._guarded:
            self._guarded[method] = (handler, guarded)
        return guarded


def _guard(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode: Callable[[bytes], Any] = handler.request_deserializer
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = handler.unary_unary
    message = f"request: the bytes are not a valid request message of {method}"

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception:  # DecodeError, or whatever a deserializer raises on garbage
            return _UNDECODABLE

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is _UNDECODABLE:
            context.set_trailing_metadata(((REASON_METADATA_KEY, MALFORMED_REASON),))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded, request_deserializer=deserialize,
        response_serializer=handler.response_serializer)
