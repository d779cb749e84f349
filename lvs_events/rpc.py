"""The gRPC edge shared by every server of the project (the coordinator, an agent's Peer service).

:func:`guard` wraps a method's handler once with the checks every call passes: the caller's
admission (:class:`lvs_events.security.interceptor.AuthInterceptor` supplies it) and the refusal
of malformed requests, below.

A request that does not parse is refused in a way the caller can act on:
``INVALID_ARGUMENT`` naming the method and the parse error. Without it grpc's default is
``UNKNOWN`` ("Unexpected DecodeError"), which reads like a crash of the server and is what a
client retries. The request deserializer is wrapped to return a marker instead of raising (grpc
calls it outside any handler code), and the handler is wrapped to refuse the marker before the
servicer sees it. A client stream ends for the servicer at its first malformed message, and the
call is refused after the servicer has answered the messages before it (a Publish stream acks
the events it got, then ends with ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

__all__ = ["Admit", "Guarded", "guard"]


class _Malformed:
    """A request whose bytes did not parse (what the wrapped deserializer returns)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as e:
            return _Malformed(str(e) or "not a valid protobuf message")

    return parse


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], method: str, bad: _Malformed) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: malformed request ({bad.error})")
    raise AssertionError("context.abort returned")  # abort always raises


class _Stream:
    """A client stream read through the check: for the servicer it ends at the first malformed
    message (as if the client had half-closed), and the call is refused once the servicer has
    answered the messages before it. What the client sends after the malformed message is read
    and dropped until it half-closes (bounded by the call's deadline and the server's limits):
    a server that stopped reading would fail the client's next write, and the client would see
    grpc's own ``INTERNAL`` error instead of the refusal."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.requests = requests
        self.malformed: _Malformed | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for req in self.requests:
            if self.malformed is not None:
                continue
            if isinstance(req, _Malformed):
                self.malformed = req
                continue
            yield req


Context = grpc.aio.ServicerContext[Any, Any]
# Run before the servicer's method, with the method's name, the request (None for a client
# stream, or a request that did not parse) and the call's context: raises (``context.abort``)
# to refuse the call.
Admit = Callable[[str, object | None, Context], Awaitable[None]]

if TYPE_CHECKING:  # grpc's classes are generic only in its type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
_Requests = AsyncIterator[Any]


def guard(h: Handler, method: str, admit: Admit | None) -> Handler:
    """``h`` behind the project's edge: ``admit`` (when given) runs first, then a request that
    did not parse is refused (see the module), keeping the handler's kind (grpc.aio tells an
    async generator handler from a coroutine one that writes through the context). One wrapper
    per call, whatever the checks: every layer of async generators costs each reply a hop."""
    des = h.request_deserializer
    parse = _tolerant(des) if des is not None else None
    ser = h.response_serializer

    async def check(request: object, context: Context) -> None:
        bad = request if isinstance(request, _Malformed) else None
        if admit is not None:
            await admit(method, None if bad is not None else request, context)
        if bad is not None:
            await _refuse(context, method, bad)

    async def enter(context: Context) -> None:
        if admit is not None:
            await admit(method, None, context)

    # grpc's stubs type behaviours as synchronous; grpc.aio's are coroutines or async generators
    if h.unary_unary is not None:
        uu = cast(Callable[[object, Context], Awaitable[object]], h.unary_unary)

        async def unary_unary(request: object, context: Context) -> object:
            await check(request, context)
            return await uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, ser)
    if h.stream_unary is not None:
        su = cast(Callable[[_Requests, Context], Awaitable[object]], h.stream_unary)

        async def stream_unary(requests: _Requests, context: Context) -> object:
            await enter(context)
            stream = _Stream(requests)
            reply = await su(stream.__aiter__(), context)
            if stream.malformed is not None:
                await _refuse(context, method, stream.malformed)
            return reply

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, ser)
    if h.unary_stream is not None:
        if inspect.isasyncgenfunction(h.unary_stream):
            usg = cast(Callable[[object, Context], AsyncIterator[object]], h.unary_stream)

            async def unary_stream_gen(request: object, context: Context) -> AsyncIterator[object]:
                await check(request, context)
                async for item in usg(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream_gen, parse, ser)
        us = cast(Callable[[object, Context], Awaitable[None]], h.unary_stream)

        async def unary_stream(request: object, context: Context) -> None:
            await check(request, context)
            await us(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, ser)
    if inspect.isasyncgenfunction(h.stream_stream):
        ssg = cast(Callable[[_Requests, Context], AsyncIterator[object]], h.stream_stream)

        async def stream_stream_gen(requests: _Requests, context: Context) -> AsyncIterator[object]:
            await enter(context)
            stream = _Stream(requests)
            async for item in ssg(stream.__aiter__(), context):
                yield item
            if stream.malformed is not None:
                await _refuse(context, method, stream.malformed)

        return grpc.stream_stream_rpc_method_handler(stream_stream_gen, parse, ser)
    ss = cast(Callable[[_Requests, Context], Awaitable[None]], h.stream_stream)

    async def stream_stream(requests: _Requests, context: Context) -> None:
        await enter(context)
        stream = _Stream(requests)
        await ss(stream.__aiter__(), context)
        if stream.malformed is not None:
            await _refuse(context, method, stream.malformed)

    return grpc.stream_stream_rpc_method_handler(stream_stream, parse, ser)


class Guarded(_Interceptor):
    """The interceptor form of :func:`guard`: every method behind it, except those of services
    named in ``unchecked`` (``admit`` is not run for them; malformed requests are still refused).
    The wrapped handler of each method is made once and reused: grpc resolves a method to the
    same handler object on every call."""

    def __init__(self, admit: Admit | None = None, *, unchecked: tuple[str, ...] = ()) -> None:
        self._admit = admit
        self._unchecked = unchecked
        self._made: dict[str, tuple[Handler, Handler]] = {}  # method -> (handler, guarded)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        made = self._made.get(method)
        if made is not None and made[0] is handler:
            return made[1]
        admit = None if method.startswith(self._unchecked) else self._admit
        guarded = guard(handler, method, admit)
        self._made[method] = (handler, guarded)  # bounded: one per method the servicers define
        return guarded
