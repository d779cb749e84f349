"""The server side of the policy: a grpc.aio interceptor that knows who calls and what they may do.

For every call the interceptor resolves the principal once (from the verified client
certificate, or :data:`~lvs_events.security.principal.UNVERIFIED` on a server without TLS),
decides the method (and, for unary requests that name a node, that node) against
:mod:`lvs_events.security.policy`, and either refuses with ``PERMISSION_DENIED`` before the
handler runs or runs the handler with the principal in :func:`current_principal`. A handler
that decides per message (``Publish``: each event) calls :meth:`Refusals.check` with the same
principal, so every refusal is logged and counted in one place.

Methods of the grpc health and reflection services are open to every caller that passed the TLS
handshake; a method the policy does not know is refused (fail closed).
"""

from __future__ import annotations

import collections
import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog

from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.security.policy import PUBLIC_SERVICES, Action, Call, Decision, Rpc, decide, show
from lvs_events.security.principal import UNVERIFIED, Principal, principal_from_context

log = structlog.get_logger("security")

# Set by the interceptor at the start of each call. grpc.aio runs every call in its own task, so
# the value is the call's own and ends with it.
_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "lvs_events_principal", default=None
)


class NoPrincipal(LookupError):
    """:func:`current_principal` outside a call admitted by :class:`AuthInterceptor`."""


def current_principal() -> Principal:
    """The principal of the call being handled."""
    p = _PRINCIPAL.get()
    if p is None:
        raise NoPrincipal("no principal: the handler does not run behind AuthInterceptor")
    return p


def _action_name(action: Action) -> str:
    return action.rpc.short if isinstance(action, Call) else f"publish {action.event_type}"


class Refusals:
    """Counts refusals by (role, action) and logs each one; servers expose :meth:`counts`."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def check(self, principal: Principal | None, action: Action, *, peer: str = "") -> Decision:
        """:func:`~lvs_events.security.policy.decide`, recording a refusal."""
        d = decide(principal, action)
        if not d.allowed:
            self.record(principal, _action_name(action), d.reason, peer=peer)
        return d

    def record(self, principal: Principal | None, action: str, reason: str, *, peer: str = "") -> None:
        role = principal.role.value if principal is not None else "none"
        self._counts[(role, action)] += 1
        log.warning(
            "refused",
            principal=str(principal) if principal is not None else None,
            action=action,
            reason=reason,
            peer=show(peer, 128),
        )

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)


def _claimed_node(rpc: Rpc, request: object) -> str | None:
    """The node a unary request says it acts for, for the RPCs whose policy depends on it."""
    match request:
        case lpb.CampaignRequest() | lpb.TakeoverRequest() | lpb.KeepAliveRequest() | lpb.ResignRequest():
            return request.node
        case lpb.PeerHeartbeat():
            return request.node
        case lpb.HandoverRequest():
            return request.from_node
    return None


if TYPE_CHECKING:  # grpc's classes are generic only in its type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor
_Context = grpc.aio.ServicerContext[Any, Any]
_Requests = AsyncIterator[object]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


class AuthInterceptor(_Interceptor):
    """``verified``: the server requires client certificates (TLS); False: every caller is
    :data:`UNVERIFIED`. ``peer``: the Peer service's configured peer node ("" = none)."""

    def __init__(self, *, verified: bool, peer: str = "", refusals: Refusals | None = None) -> None:
        self.verified = verified
        self.peer = peer
        self.refusals = refusals or Refusals()

    def _principal(self, context: _Context) -> Principal | None:
        return principal_from_context(context) if self.verified else UNVERIFIED

    async def _admit(self, method: str, request: object, context: _Context) -> None:
        principal = self._principal(context)
        try:
            rpc = Rpc(method)
        except ValueError:
            reason = f"method {show(method, 128)} is not in the access policy"
            self.refusals.record(principal, method, reason, peer=context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        call = Call(rpc, _claimed_node(rpc, request), self.peer)
        d = self.refusals.check(principal, call, peer=context.peer())
        if not d.allowed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, d.reason)
        _PRINCIPAL.set(principal)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(PUBLIC_SERVICES):
            return handler
        return self._wrap(handler, method)

    def _wrap(self, h: Handler, method: str) -> Handler:
        """``h`` with :meth:`_admit` run first, keeping its kind (grpc.aio tells an async generator
        handler from a coroutine one that writes through the context)."""
        admit = self._admit
        des, ser = h.request_deserializer, h.response_serializer
        # grpc's stubs type behaviours as synchronous; grpc.aio's are coroutines or async generators
        if h.unary_unary is not None:
            uu = cast(Callable[[object, _Context], Awaitable[object]], h.unary_unary)

            async def unary_unary(request: object, context: _Context) -> object:
                await admit(method, request, context)
                return await uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
        if h.stream_unary is not None:
            su = cast(Callable[[_Requests, _Context], Awaitable[object]], h.stream_unary)

            async def stream_unary(requests: _Requests, context: _Context) -> object:
                await admit(method, None, context)
                return await su(requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
        if h.unary_stream is not None:
            if inspect.isasyncgenfunction(h.unary_stream):
                usg = cast(Callable[[object, _Context], AsyncIterator[object]], h.unary_stream)

                async def unary_stream_gen(request: object, context: _Context) -> AsyncIterator[object]:
                    await admit(method, request, context)
                    async for item in usg(request, context):
                        yield item

                return grpc.unary_stream_rpc_method_handler(unary_stream_gen, des, ser)
            us = cast(Callable[[object, _Context], Awaitable[None]], h.unary_stream)

            async def unary_stream(request: object, context: _Context) -> None:
                await admit(method, request, context)
                await us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
        if inspect.isasyncgenfunction(h.stream_stream):
            ssg = cast(Callable[[_Requests, _Context], AsyncIterator[object]], h.stream_stream)

            async def stream_stream_gen(requests: _Requests, context: _Context) -> AsyncIterator[object]:
                await admit(method, None, context)
                async for item in ssg(requests, context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(stream_stream_gen, des, ser)
        ss = cast(Callable[[_Requests, _Context], Awaitable[None]], h.stream_stream)

        async def stream_stream(requests: _Requests, context: _Context) -> None:
            await admit(method, None, context)
            await ss(requests, context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
