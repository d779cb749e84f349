"""The gRPC edge shared by every server of the project (the coordinator, an agent's Peer service).

:class:`MalformedRequests` makes a request that does not parse a refusal the caller can act on:
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
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

__all__ = ["MalformedRequests"]


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


async def _drain(result: Any) -> AsyncIterator[Any]:
    """A streaming handler is an async generator (yields replies) or a coroutine (writes them)."""
    if inspect.isasyncgen(result):
        async for reply in result:
            yield reply
    else:
        await result


Context = grpc.aio.ServicerContext[Any, Any]
Behaviour = Callable[..., Any]  # the servicer's method: grpc's stubs type it for the sync server


if TYPE_CHECKING:  # generic in grpc's type stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class MalformedRequests(_Interceptor):
    """Refuse unparsable requests with ``INVALID_ARGUMENT`` (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = _tolerant(handler.request_deserializer)
        out = handler.response_serializer
        if handler.request_streaming:
            return _streaming_requests(handler, method, parse, out)
        if not handler.response_streaming:
            uu: Behaviour = handler.unary_unary  # type: ignore[assignment]

            async def unary_unary(req: Any, context: Context) -> Any:
                if isinstance(req, _Malformed):
                    await _refuse(context, method, req)
                return await uu(req, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, parse, out)
        us: Behaviour = handler.unary_stream  # type: ignore[assignment]

        async def unary_stream(req: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(req, _Malformed):
                await _refuse(context, method, req)
            async for reply in _drain(us(req, context)):
                yield reply

        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, out)


def _streaming_requests(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, parse: Callable[[bytes], Any], out: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    if not handler.response_streaming:
        su: Behaviour = handler.stream_unary  # type: ignore[assignment]

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            stream = _Stream(requests)
            reply = await su(stream.__aiter__(), context)
            if stream.malformed is not None:
                await _refuse(context, method, stream.malformed)
            return reply

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, out)
    ss: Behaviour = handler.stream_stream  # type: ignore[assignment]

    async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        stream = _Stream(requests)
        async for reply in _drain(ss(stream.__aiter__(), context)):
            yield reply
        if stream.malformed is not None:
            await _refuse(context, method, stream.malformed)

    return grpc.stream_stream_rpc_method_handler(stream_stream, parse, out)
