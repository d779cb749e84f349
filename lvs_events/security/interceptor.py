"""The server side of the policy: a grpc.aio interceptor that knows who calls and what they may do.

For every call the interceptor resolves the principal once (from the verified client
certificate, or :data:`~lvs_events.security.principal.UNVERIFIED` on a server without TLS),
decides the method (and, for unary requests that name a node, that node) against
:mod:`lvs_events.security.policy`, and either refuses with ``PERMISSION_DENIED`` before the
handler runs or runs the handler with the principal in :func:`current_principal`. A handler
that decides per message (``Publish``: each event) calls :meth:`Refusals.check` with the same
principal, so every refusal is logged and counted in one place.

Methods of the grpc health and reflection services are open to every caller that passed the TLS
handshake; a method the policy does not know is refused (fail closed). The wrapping itself is
:func:`lvs_events.rpc.guard`'s, shared with the refusal of malformed requests.
"""

from __future__ import annotations

import collections
import contextvars

import grpc
import structlog

from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.rpc import Context, Guarded
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


class AuthInterceptor(Guarded):
    """``verified``: the server requires client certificates (TLS); False: every caller is
    :data:`UNVERIFIED`. ``peer``: the Peer service's configured peer node ("" = none).

    The one interceptor of a server: it also refuses malformed requests
    (:func:`lvs_events.rpc.guard`), after admission, so an unadmitted caller learns nothing of
    how its bytes parse."""

    def __init__(self, *, verified: bool, peer: str = "", refusals: Refusals | None = None) -> None:
        super().__init__(self._admit, unchecked=PUBLIC_SERVICES)
        self.verified = verified
        self.peer = peer
        self.refusals = refusals or Refusals()

    def _principal(self, context: Context) -> Principal | None:
        return principal_from_context(context) if self.verified else UNVERIFIED

    async def _admit(self, method: str, request: object | None, context: Context) -> None:
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
