"""Client side of the director pair's leadership: the election (``LeaderElection`` on the
coordinators), the agents' ``Peer`` service, and the operator calls built on them.

Domain-side values only; protobuf stays in here.

Operator API (for ``lvs-events status`` / ``lvs-events switchover``)::

    st = await ha_status(["10.0.0.1:7420", "10.0.0.2:7420"])      # -> HaStatus
    rep = await switchover(["10.0.0.1:7420"], to="lb2")            # -> SwitchoverReport

Every call has a deadline; a coordinator that does not answer is skipped for the next one
(the shared failover of :mod:`lvs_events.retry`: an endpoint ring, one backoff policy).

TLS: every function and client takes ``tls`` (:class:`~lvs_events.security.tls.TlsFiles`, or
None for the environment and ``/etc/default/lvs-events``, plaintext when none is found; see
:mod:`lvs_events.client.channels`). The same files serve the calls to the coordinators and to
the leader agent's Peer service.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc
import grpc.aio

from lvs_events.client.channels import Channels
from lvs_events.errors import CoordinatorUnavailable, LvsEventsError
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc
from lvs_events.retry import EndpointRing, RetryDeadline, RetryPolicy, call_over_endpoints
from lvs_events.security.tls import TlsFiles

__all__ = [
    "ElectionReply",
    "HaObserver",
    "HaStatus",
    "KeepAliveReply",
    "LeaderElectionClient",
    "LeaderInfo",
    "NodeView",
    "PeerUnavailable",
    "SwitchoverFailed",
    "SwitchoverReport",
    "ha_status",
    "peer_status",
    "switchover",
]

_RETRYABLE: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
T = TypeVar("T")
# After the first round over the coordinators (at once), retries wait 20 ms doubling to 1 s: an
# election call's deadline is about a second, and a leader watch must come back quickly.
_BACKOFF_INITIAL: Final = 0.02
_BACKOFF_CAP: Final = 1.0
_ELECTION_CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
)


class PeerUnavailable(LvsEventsError):
    """An agent's Peer service did not answer within the deadline."""


class SwitchoverFailed(LvsEventsError):
    """A planned switchover was refused or did not complete."""


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    node: str  # "" = no leader
    term: int
    lease_id: int = 0
    address: str = ""  # the leader agent's Peer service
    revision: int = 0  # log revision of its Leadership ACQUIRED event

    @property
    def present(self) -> bool:
        return bool(self.node)


@dataclass(frozen=True, slots=True)
class ElectionReply:
    acquired: bool
    leader: LeaderInfo


@dataclass(frozen=True, slots=True)
class KeepAliveReply:
    held: bool
    ttl: int
    leader: LeaderInfo


def _retryable(e: Exception) -> bool:
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in _RETRYABLE


def _describe(e: Exception) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name} {e.details() or ''}".strip()
    return str(e) or type(e).__name__


def _leader(msg: lpb.LeaderInfo) -> LeaderInfo:
    return LeaderInfo(msg.node, msg.term, msg.lease_id, msg.address, msg.revision)


class LeaderElectionClient:
    """The election as the agent sees it. Tries ``endpoints`` in order (the local coordinator
    first), each attempt bounded, the whole call bounded by ``within``."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 1.0, tls: TlsFiles | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("LeaderElectionClient needs at least one coordinator endpoint")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._channels = Channels(tls, _ELECTION_CHANNEL_OPTIONS)
        self._ring = EndpointRing(self.endpoints)
        self._policy = RetryPolicy(
            initial=_BACKOFF_INITIAL, cap=_BACKOFF_CAP, immediate=len(self._ring.endpoints)
        )

    @property
    def files(self) -> TlsFiles | None:
        """The TLS files in use (None: plaintext)."""
        return self._channels.files

    async def close(self) -> None:
        await self._channels.close()

    def _stub(self, endpoint: str) -> lpb_grpc.LeaderElectionAsyncStub:
        return lpb_grpc.LeaderElectionStub(self._channels.get(endpoint))

    async def _call(
        self,
        what: str,
        fn: Callable[[lpb_grpc.LeaderElectionAsyncStub, float], Awaitable[T]],
        within: float | None,
    ) -> T:
        last = "no attempt"

        async def attempt(endpoint: str, seconds: float) -> T:
            return await fn(self._stub(endpoint), seconds)

        def failed(endpoint: str, e: Exception) -> None:
            nonlocal last
            last = f"{endpoint}: {_describe(e)}"

        try:
            # spread: an unreachable coordinator (partitioned) must not use up the whole deadline
            return await call_over_endpoints(
                self._ring,
                attempt,
                policy=self._policy,
                within=within or self.timeout,
                retryable=_retryable,
                spread=True,
                on_failure=failed,
            )
        except grpc.aio.AioRpcError as e:
            raise LvsEventsError(f"{what}: {e.code().name}: {e.details()}") from e
        except RetryDeadline as e:
            raise CoordinatorUnavailable(f"{what}: no coordinator answered in time (last: {last})") from e

    async def campaign(
        self, node: str, ttl: int, address: str = "", *, within: float | None = None
    ) -> ElectionReply:
        req = lpb.CampaignRequest(node=node, ttl_seconds=ttl, address=address)

        async def call(stub: lpb_grpc.LeaderElectionAsyncStub, left: float) -> ElectionReply:
            r = await stub.Campaign(req, timeout=left)
            return ElectionReply(r.acquired, _leader(r.leader))

        return await self._call("campaign", call, within)

    async def takeover(
        self, node: str, stale_term: int, ttl: int, address: str = "", *, within: float | None = None
    ) -> ElectionReply:
        req = lpb.TakeoverRequest(node=node, stale_term=stale_term, ttl_seconds=ttl, address=address)

        async def call(stub: lpb_grpc.LeaderElectionAsyncStub, left: float) -> ElectionReply:
            r = await stub.Takeover(req, timeout=left)
            return ElectionReply(r.acquired, _leader(r.leader))

        return await self._call("takeover", call, within)

    async def keepalive(
        self, node: str, term: int, lease_id: int, *, within: float | None = None
    ) -> KeepAliveReply:
        req = lpb.KeepAliveRequest(node=node, term=term, lease_id=lease_id)

        async def call(stub: lpb_grpc.LeaderElectionAsyncStub, left: float) -> KeepAliveReply:
            r = await stub.KeepAlive(req, timeout=left)
            return KeepAliveReply(r.held, r.ttl, _leader(r.leader))

        return await self._call("keepalive", call, within)

    async def resign(self, node: str, term: int, reason: str = "", *, within: float | None = None) -> bool:
        req = lpb.ResignRequest(node=node, term=term, reason=reason)

        async def call(stub: lpb_grpc.LeaderElectionAsyncStub, left: float) -> bool:
            r = await stub.Resign(req, timeout=left)
            return bool(r.acquired)

        return await self._call("resign", call, within)

    async def get_leader(self, *, within: float | None = None) -> LeaderInfo:
        async def call(stub: lpb_grpc.LeaderElectionAsyncStub, left: float) -> LeaderInfo:
            return _leader(await stub.GetLeader(lpb.GetLeaderRequest(), timeout=left))

        return await self._call("get leader", call, within)

    async def watch_leader(self, *, max_age: float = 300.0) -> AsyncIterator[LeaderInfo]:
        """The leader, then each change, from the election's ``Observe`` stream; runs until
        cancelled. A stream is renewed after ``max_age`` seconds on the same coordinator; a
        broken one moves to the next coordinator, with backoff while none answers (the current
        leader is sent again first on every new stream)."""
        backoff = RetryPolicy(initial=_BACKOFF_INITIAL, cap=_BACKOFF_CAP, immediate=1).start()
        while True:
            endpoint = self._ring.current
            call = self._stub(endpoint).Observe(lpb.GetLeaderRequest(), timeout=max_age)
            renewed = False
            try:
                async for msg in call:
                    backoff.reset()
                    yield _leader(msg)
            except grpc.aio.AioRpcError as e:
                renewed = e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                if not renewed:
                    self._ring.failed(endpoint)
            finally:
                call.cancel()
            if not renewed:  # a broken stream, or one the coordinator ended
                await backoff.sleep()


# --- the Peer service, as operators call it -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    node: str
    role: str
    term: int
    revision: int
    digest: str
    seen_ago: float
    vips: bool


@dataclass(frozen=True, slots=True)
class HaStatus:
    """``lvs-events status``: who leads (etcd's word) and both agents' own views."""

    leader: LeaderInfo
    nodes: tuple[NodeView, ...]  # the leader agent's view of itself, then of its peer
    vips: tuple[str, ...]
    reason: str  # why the leader agent's role last changed
    error: str = ""  # the leader agent could not be asked (nodes is empty then)


@dataclass(frozen=True, slots=True)
class SwitchoverReport:
    from_node: str
    to_node: str
    old_term: int
    new_term: int
    seconds: float  # as measured by the old active, request to new leader in etcd


def _node_view(v: lpb.NodeStatusView) -> NodeView:
    return NodeView(v.node, v.role, v.term, v.revision, v.digest, v.seen_ago, v.vips)


async def _peer_call(channels: Channels, address: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    try:
        return await fn(lpb_grpc.PeerStub(channels.get(address)))
    except grpc.aio.AioRpcError as e:
        raise PeerUnavailable(f"agent at {address}: {e.code().name} {e.details() or ''}".strip()) from e


async def _status_call(channels: Channels, address: str, within: float) -> lpb.PeerStatus:
    async def fn(stub: Any) -> lpb.PeerStatus:
        r: lpb.PeerStatus = await stub.Status(lpb.PeerStatusRequest(), timeout=within)
        return r

    return await _peer_call(channels, address, fn)


async def peer_status(address: str, *, within: float = 2.0, tls: TlsFiles | None = None) -> lpb.PeerStatus:
    channels = Channels(tls)
    try:
        return await _status_call(channels, address, within)
    finally:
        await channels.close()


class HaObserver:
    """:func:`ha_status` over channels kept open from one call to the next, for a caller that
    asks often (a drill polls every few tens of milliseconds: no TLS handshake per poll)."""

    def __init__(
        self, coordinators: Sequence[str], *, within: float = 3.0, tls: TlsFiles | None = None
    ) -> None:
        self.within = within
        self._election = LeaderElectionClient(coordinators, timeout=within, tls=tls)
        self._peers = Channels(self._election.files)

    async def close(self) -> None:
        await self._election.close()
        await self._peers.close()

    async def status(self, *, within: float | None = None) -> HaStatus:
        """The leader from etcd (via a coordinator) and the leader agent's view of both nodes."""
        seconds = within or self.within
        leader = await self._election.get_leader(within=seconds)
        if not leader.present or not leader.address:
            return HaStatus(
                leader, (), (), "", error="no leader" if not leader.present else "leader has no address"
            )
        try:
            st = await _status_call(self._peers, leader.address, seconds)
        except PeerUnavailable as e:
            return HaStatus(leader, (), (), "", error=str(e))
        nodes = [_node_view(st.self)]
        if st.peer.node:
            nodes.append(_node_view(st.peer))
        return HaStatus(leader, tuple(nodes), tuple(st.vips), st.reason)


async def ha_status(
    coordinators: Sequence[str], *, within: float = 3.0, tls: TlsFiles | None = None
) -> HaStatus:
    """The leader from etcd (via a coordinator) and the leader agent's view of both nodes."""
    observer = HaObserver(coordinators, within=within, tls=tls)
    try:
        return await observer.status()
    finally:
        await observer.close()


async def switchover(
    coordinators: Sequence[str], to: str = "", *, within: float = 5.0, tls: TlsFiles | None = None
) -> SwitchoverReport:
    """Planned switchover: ask the active agent to hand over to its peer (or ``to``).

    The active checks that the peer is ready (same applied revision and table digest), removes
    its VIPs, and asks the peer to take over its term (one etcd transaction); the call returns
    when the new active holds the leadership. Raises :class:`SwitchoverFailed` when refused.
    """
    started = time.monotonic()
    client = LeaderElectionClient(coordinators, timeout=within, tls=tls)
    try:
        leader = await client.get_leader()
    finally:
        await client.close()
    if not leader.present:
        raise SwitchoverFailed("no active director to switch over from")
    if to and to == leader.node:
        raise SwitchoverFailed(f"{to} is already active (term {leader.term})")
    if not leader.address:
        raise SwitchoverFailed(f"the active {leader.node} published no Peer address")
    remaining = max(0.1, within - (time.monotonic() - started))

    async def fn(stub: Any) -> lpb.HandoverReply:
        r: lpb.HandoverReply = await stub.Switchover(
            lpb.SwitchoverRequest(to=to, timeout=remaining), timeout=remaining + 0.5
        )
        return r

    channels = Channels(client.files)
    try:
        reply = await _peer_call(channels, leader.address, fn)
    finally:
        await channels.close()
    if not reply.ok:
        raise SwitchoverFailed(f"{leader.node} refused the switchover: {reply.error}")
    return SwitchoverReport(leader.node, reply.node, leader.term, reply.term, reply.seconds)
