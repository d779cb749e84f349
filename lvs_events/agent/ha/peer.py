"""The Peer gRPC service and client between the two agents of a pair: the protobuf edge of HA.

The HA runner (:mod:`lvs_events.agent.ha.runner`) works on the domain values defined here
(:class:`Heartbeat`, :class:`HandoverAnswer`, :class:`PairStatus`); this module is the only one
of the agent's HA code that sees generated protobuf code or gRPC: :class:`PeerService` converts
requests to calls of a :class:`PeerHandler` (the runner) and its answers back, :class:`PeerClient`
converts the runner's calls to the peer into requests and the replies into domain values.

Trust. With TLS the service requires a client certificate of the CA, and
:class:`~lvs_events.security.interceptor.AuthInterceptor` lets only the configured peer's
director certificate call ``Heartbeat`` and ``Handover`` (naming itself), operators call
``Switchover``, and every principal read ``Status`` (docs/security.md). Without TLS it listens on
loopback only, or anywhere with ``insecure`` (logged at every start).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
import structlog

from lvs_events.client.channels import Channels
from lvs_events.client.ha import NodeView, PeerUnavailable
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc
from lvs_events.security.interceptor import AuthInterceptor, Refusals
from lvs_events.security.tls import ListenMode, TlsFiles, check_listen, insecure_warning, server_credentials

__all__ = [
    "DEFAULT_SWITCHOVER_WITHIN",
    "HandoverAnswer",
    "Heartbeat",
    "PairStatus",
    "PeerClient",
    "PeerHandler",
    "PeerService",
    "answer_from_pb",
    "answer_to_pb",
    "heartbeat_from_pb",
    "heartbeat_to_pb",
    "serve_peer",
    "status_to_pb",
]

DEFAULT_SWITCHOVER_WITHIN = 5.0  # seconds, for a Switchover request that names no timeout

# The peer channel reconnects fast: a heartbeat every interval must not wait gRPC's default
# reconnect backoff (seconds) after the peer restarted.
_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 200))

log = structlog.get_logger("lvs_events.agent.ha.peer")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One agent's word to the other: its role, term (0 for a standby), what it applied, and
    the term of the peer's it acknowledges (``ack_term``, in a reply)."""

    node: str
    role: str
    term: int
    revision: int = 0
    digest: str = ""
    ack_term: int = 0


@dataclass(frozen=True, slots=True)
class HandoverAnswer:
    """The outcome of a handover or a switchover: the new active's ``node`` and ``term`` when
    ``ok``, else ``error``; ``seconds`` as measured by the old active (a switchover)."""

    ok: bool
    error: str = ""
    term: int = 0
    node: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class PairStatus:
    """This agent's view of the pair (``lvs-events status``)."""

    me: NodeView
    peer: NodeView | None  # None: never heard from
    leader: str
    leader_term: int
    reason: str  # why our role last changed
    vips: tuple[str, ...]


class PeerHandler(Protocol):
    """What the Peer service asks of the HA runner."""

    def heartbeat_received(self, beat: Heartbeat) -> Heartbeat:
        """The peer's heartbeat; returns ours, acknowledging its term as the machine decides."""
        ...

    async def handover_asked(self, from_node: str, term: int) -> HandoverAnswer:
        """The active hands its term over to us (a planned switchover)."""
        ...

    async def switchover(self, to: str, within: float) -> HandoverAnswer:
        """An operator asks us (the active) to hand over to ``to`` ("" = the peer)."""
        ...

    def status(self) -> PairStatus: ...


# -- conversions ------------------------------------------------------------------------------


def heartbeat_to_pb(b: Heartbeat) -> lpb.PeerHeartbeat:
    return lpb.PeerHeartbeat(
        node=b.node, role=b.role, term=b.term, revision=b.revision, digest=b.digest, ack_term=b.ack_term
    )


def heartbeat_from_pb(m: lpb.PeerHeartbeat) -> Heartbeat:
    return Heartbeat(m.node, m.role, m.term, m.revision, m.digest, m.ack_term)


def answer_to_pb(a: HandoverAnswer) -> lpb.HandoverReply:
    return lpb.HandoverReply(ok=a.ok, error=a.error, term=a.term, node=a.node, seconds=a.seconds)


def answer_from_pb(m: lpb.HandoverReply) -> HandoverAnswer:
    return HandoverAnswer(m.ok, m.error, m.term, m.node, m.seconds)


def _node_to_pb(v: NodeView | None) -> lpb.NodeStatusView:
    if v is None:
        return lpb.NodeStatusView()
    return lpb.NodeStatusView(
        node=v.node,
        role=v.role,
        term=v.term,
        revision=v.revision,
        digest=v.digest,
        seen_ago=v.seen_ago,
        vips=v.vips,
    )


def status_to_pb(s: PairStatus) -> lpb.PeerStatus:
    return lpb.PeerStatus(
        self=_node_to_pb(s.me),
        peer=_node_to_pb(s.peer),
        leader=s.leader,
        leader_term=s.leader_term,
        reason=s.reason,
        vips=list(s.vips),
    )


def _rpc_error(e: grpc.aio.AioRpcError) -> str:
    return f"{e.code().name} {e.details() or ''}".strip()


# -- the service ------------------------------------------------------------------------------


class PeerService(lpb_grpc.PeerServicer):
    """The Peer service: protobuf in, a :class:`PeerHandler` call, protobuf out."""

    def __init__(self, handler: PeerHandler) -> None:
        self.handler = handler

    async def Heartbeat(
        self, request: lpb.PeerHeartbeat, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.PeerHeartbeat:
        return heartbeat_to_pb(self.handler.heartbeat_received(heartbeat_from_pb(request)))

    async def Handover(
        self, request: lpb.HandoverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.HandoverReply:
        return answer_to_pb(await self.handler.handover_asked(request.from_node, request.term))

    async def Switchover(
        self, request: lpb.SwitchoverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.HandoverReply:
        within = request.timeout if request.timeout > 0 else DEFAULT_SWITCHOVER_WITHIN
        return answer_to_pb(await self.handler.switchover(request.to, within))

    async def Status(
        self, request: lpb.PeerStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.PeerStatus:
        return status_to_pb(self.handler.status())


async def serve_peer(
    handler: PeerHandler,
    listen: str,
    serving: Callable[[int], None],
    *,
    tls: TlsFiles | None = None,
    peer_node: str = "",
    insecure: bool = False,
    refusals: Refusals | None = None,
) -> None:
    """Serve the Peer service on ``listen`` until cancelled; ``serving(port)`` once it listens.

    ``tls``: mutual TLS with these files (reloaded when they change), and only ``peer_node``'s
    director certificate may send heartbeats and handovers; None: plaintext, on loopback unless
    ``insecure``. Raises :class:`~lvs_events.security.tls.ListenRefused` (plaintext off
    loopback), :class:`~lvs_events.security.tls.TlsError` (files that do not check), ``OSError``
    when it cannot listen."""
    if tls is not None and not peer_node:
        raise ValueError("a Peer service with TLS needs its peer's node name")
    mode = check_listen(listen, tls is not None, insecure)
    if mode is ListenMode.INSECURE:
        log.warning(insecure_warning(listen), listen=listen)
    auth = AuthInterceptor(verified=tls is not None, peer=peer_node, refusals=refusals)
    # as on the coordinator: who calls is decided before what the request says
    server = grpc.aio.server(interceptors=[auth], options=[("grpc.so_reuseport", 0)])
    lpb_grpc.add_PeerServicer_to_server(PeerService(handler), server)
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, server_credentials(tls))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    serving(port)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0.5)


# -- the client -------------------------------------------------------------------------------


class PeerClient:
    """Calls to the peer agent's Peer service on one channel, replaced by :meth:`reconnect` (and
    after a certificate rotation). ``tls``: see :mod:`lvs_events.client.channels`."""

    def __init__(self, address: str, *, tls: TlsFiles | None = None) -> None:
        self.address = address
        # heartbeats are short calls: a channel retired by a rotation is closed within seconds
        self._channels = Channels(tls, _CHANNEL_OPTIONS, retire_grace=5.0)

    def _stub(self) -> lpb_grpc.PeerAsyncStub:
        return lpb_grpc.PeerStub(self._channels.get(self.address))

    async def heartbeat(self, beat: Heartbeat, *, within: float) -> Heartbeat:
        """Send ours, return the peer's reply; :class:`PeerUnavailable` when none came in time."""
        try:
            reply = await self._stub().Heartbeat(heartbeat_to_pb(beat), timeout=within)
        except grpc.aio.AioRpcError as e:
            raise PeerUnavailable(f"peer at {self.address}: {_rpc_error(e)}") from e
        return heartbeat_from_pb(reply)

    async def handover(self, from_node: str, term: int, *, within: float) -> HandoverAnswer:
        """Ask the peer to take over our ``term``; a call that fails is a refused handover."""
        try:
            reply = await self._stub().Handover(
                lpb.HandoverRequest(from_node=from_node, term=term), timeout=within
            )
        except grpc.aio.AioRpcError as e:
            return HandoverAnswer(ok=False, error=_rpc_error(e))
        return answer_from_pb(reply)

    async def reconnect(self) -> bool:
        """Drop the channel (the next call opens a new one); False when there was none."""
        return await self._channels.drop(self.address)

    async def close(self) -> None:
        await self._channels.close()
