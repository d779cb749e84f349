"""``lvs_events.v1.LeaderElection``: the election of the active director, decided by etcd.

Agents never talk to etcd; they ask the coordinator, which runs each request as one etcd
transaction (a :class:`~lvs_events.coordinator.stores.LeaderStore`, on etcd
:class:`lvs_events.etcd.leader.EtcdLeaderStore`): the leader key bound to a lease, a term counter
bumped in the same transaction, and the Leadership events appended to the log in it too.

* ``Campaign``: create-if-absent. A fresh lease per campaign; revoked again if it lost (left to
  expire if the call failed: it may have won).
* ``Takeover``: replaces the leader only while the leader key still holds ``stale_term``; the old
  lease is revoked afterwards (its keys were already rebound to the new lease).
* ``KeepAlive``: refreshes the lease and confirms, with a linearizable read, that the leader key
  still holds the caller's term and lease (``held``).
* ``Resign``: deletes the leader keys if they hold the term; logs LOST.
* ``GetLeader`` / ``Observe``: the leader now / and each change (an etcd watch).

Every call has a deadline: the smaller of the client's and the coordinator's etcd timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
import grpc.aio
import structlog

from lvs_events import wire
from lvs_events.client.events import new_event_id
from lvs_events.coordinator.stores import Appended, LeaderRecord, LeaderStore
from lvs_events.domain.events import Event, Leadership, LeadershipChange
from lvs_events.domain.validate import MAX_ID_LEN, MAX_TEXT, is_node_name
from lvs_events.errors import StoreError
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.pb.v1 import leadership_pb2 as lpb
from lvs_events.pb.v1 import leadership_pb2_grpc as lpb_grpc
from lvs_events.retry import RetryPolicy

__all__ = ["SERVICE_NAME", "LeaderElectionService", "add_leader_election"]

log = structlog.get_logger(__name__)

SERVICE_NAME: str = lpb.DESCRIPTOR.services_by_name["LeaderElection"].full_name
MAX_TTL = 3600
OBSERVE_FAILURES = 3  # broken watches in a row (no change delivered between) before Observe fails
_OBSERVE_RETRY = RetryPolicy(initial=0.1, cap=1.0)


def leadership_event(cluster: str, node: str, change: LeadershipChange, term: int, reason: str) -> pb.Event:
    """A Leadership event as the coordinator writes it (``origin`` is the node concerned)."""
    now = time.time()
    return wire.event_to_pb(
        Event(
            event_id=new_event_id(now),
            cluster=cluster,
            origin=node,
            actor="lvs-coordinator",
            reason=reason,
            wall_time=now,
            payload=Leadership(node, change, term),
        )
    )


def _info(record: LeaderRecord | None, term: int) -> lpb.LeaderInfo:
    if record is None:
        return lpb.LeaderInfo(term=term)
    return lpb.LeaderInfo(
        node=record.node,
        term=record.term,
        lease_id=record.lease_id,
        address=record.address,
        revision=record.revision,
    )


class LeaderElectionService(lpb_grpc.LeaderElectionServicer):
    def __init__(self, leaders: LeaderStore, cluster: str, *, timeout: float) -> None:
        self.leaders = leaders
        self.cluster = cluster
        self.timeout = timeout
        self._background: set[asyncio.Task[None]] = set()

    def _within(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.timeout
        return max(0.05, min(self.timeout, remaining - 0.01))

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], what: str, e: StoreError) -> None:
        log.warning("leadership call failed", call=what, error=str(e))
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{what}: {e}")

    async def Campaign(
        self, request: lpb.CampaignRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.ElectionReply:
        return await self._elect(
            context,
            node=request.node,
            ttl=request.ttl_seconds,
            address=request.address,
            reason=request.reason,
            stale_term=None,
        )

    async def Takeover(
        self, request: lpb.TakeoverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.ElectionReply:
        if request.stale_term <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stale_term: expected a term > 0")
        return await self._elect(
            context,
            node=request.node,
            ttl=request.ttl_seconds,
            address=request.address,
            reason=request.reason,
            stale_term=request.stale_term,
        )

    async def _elect(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        node: str,
        ttl: int,
        address: str,
        reason: str,
        stale_term: int | None,
    ) -> lpb.ElectionReply:
        what = "campaign" if stale_term is None else "takeover"
        await _check_node(context, node)
        await _check_reason(context, reason)
        if len(address) > MAX_ID_LEN:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"address: expected host:port, found {len(address)} chars"
            )
        if not 1 <= ttl <= MAX_TTL:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ttl_seconds: expected 1..{MAX_TTL}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._within(context)
        replaced: list[LeaderRecord] = []

        def events_for(term: int, prev: LeaderRecord | None) -> list[pb.Event]:
            replaced.clear()
            out = []
            if prev is not None:
                replaced.append(prev)
                why = f"taken over by {node}" if stale_term is not None else "lease expired"
                out.append(leadership_event(self.cluster, prev.node, LeadershipChange.LOST, prev.term, why))
            out.append(
                leadership_event(
                    self.cluster, node, LeadershipChange.ACQUIRED, term, reason or f"{what} by {node}"
                )
            )
            return out

        try:
            lease_id, _granted = await self.leaders.grant(ttl, within=deadline - loop.time())
            outcome = await self.leaders.acquire(
                node,
                lease_id,
                address=address,
                expect_term=stale_term,
                events_for=events_for,
                within=max(0.05, deadline - loop.time()),
            )
        except StoreError as e:
            # Not revoked: a failed acquire is ambiguous (its transaction may have landed after
            # our deadline), and revoking a lease the leader key is bound to would delete the key:
            # no leader, then a campaign and one more term. The caller's retry finds the key
            # holding its node and adopts it; otherwise the lease expires within `ttl`.
            await self._fail(context, what, e)
            raise  # not reached: abort raises
        if not outcome.acquired:
            await self._revoke_quietly(lease_id)
        else:
            log.info("leader elected", node=node, term=outcome.term, how=what, lease_id=lease_id)
            for old in replaced:  # after the answer: the caller must not wait for this
                if old.lease_id != lease_id:
                    task = asyncio.create_task(self._revoke_quietly(old.lease_id))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
        return lpb.ElectionReply(acquired=outcome.acquired, leader=_info(outcome.leader, outcome.term))

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self.leaders.revoke(lease_id, within=min(self.timeout, 1.0))
        except StoreError as e:
            log.info("lease revoke failed (it will expire)", lease_id=lease_id, error=str(e))

    async def KeepAlive(
        self, request: lpb.KeepAliveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.KeepAliveReply:
        try:
            out = await self.leaders.keepalive(request.lease_id, request.term, within=self._within(context))
        except StoreError as e:
            await self._fail(context, "keepalive", e)
            raise
        return lpb.KeepAliveReply(held=out.held, ttl=out.ttl, leader=_info(out.leader, out.term))

    async def Resign(
        self, request: lpb.ResignRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.ElectionReply:
        node = request.node
        await _check_node(context, node)
        await _check_reason(context, request.reason)

        def events_for(term: int, prev: LeaderRecord | None) -> list[pb.Event]:
            who = prev.node if prev is not None else node
            return [
                leadership_event(
                    self.cluster, who, LeadershipChange.LOST, request.term, request.reason or "resigned"
                )
            ]

        try:
            out = await self.leaders.resign(
                node, request.term, events_for=events_for, within=self._within(context)
            )
        except StoreError as e:
            await self._fail(context, "resign", e)
            raise
        if out.acquired:
            log.info("leader resigned", node=node, term=request.term)
        return lpb.ElectionReply(acquired=out.acquired, leader=_info(out.leader, out.term))

    async def GetLeader(
        self, request: lpb.GetLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> lpb.LeaderInfo:
        try:
            leader, term, _ = await self.leaders.current(within=self._within(context))
        except StoreError as e:
            await self._fail(context, "get leader", e)
            raise
        return _info(leader, term)

    async def Observe(  # an async generator, as grpc.aio allows
        self, request: lpb.GetLeaderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[lpb.LeaderInfo]:
        last: tuple[str, int] | None = None
        backoff = _OBSERVE_RETRY.start()
        while True:
            try:
                leader, term, rev = await self.leaders.current(within=self.timeout)
                info = _info(leader, term)
                if (info.node, info.term) != last:
                    last = (info.node, info.term)
                    yield info
                async for record, _rev in self.leaders.watch(rev + 1):
                    backoff.reset()
                    if record is None:
                        # deleted: resign or lease expiry; the term counter is unchanged
                        info = lpb.LeaderInfo(term=last[1] if last else 0)
                    else:
                        info = _info(record, record.term)
                    if (info.node, info.term) != last:
                        last = (info.node, info.term)
                        yield info
            except StoreError as e:
                if backoff.failures >= OBSERVE_FAILURES:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"observe: {e}")
                await backoff.sleep()


def add_leader_election(server: grpc.aio.Server, leaders: LeaderStore, cluster: str, timeout: float) -> None:
    """Register the LeaderElection service on a coordinator's server."""
    lpb_grpc.add_LeaderElectionServicer_to_server(
        LeaderElectionService(leaders, cluster, timeout=timeout), server
    )


async def _check_node(context: grpc.aio.ServicerContext[Any, Any], node: str) -> None:
    """The node an election call names goes into the leader key and the Leadership events of the
    log: it must be a node name the log accepts (the same rule as an event's ``origin``)."""
    if not is_node_name(node):
        found = repr(node)[:80]
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"node: expected a node name ([A-Za-z0-9._@-]), found {found}"
        )


async def _check_reason(context: grpc.aio.ServicerContext[Any, Any], reason: str) -> None:
    if len(reason) > MAX_TEXT:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"reason: at most {MAX_TEXT} characters")


def publisher_may_not(msg: pb.Event) -> str:
    """Why a publisher may not send this event ("" = it may): Leadership events are written by
    the election itself, in its transactions, never published."""
    if msg.WhichOneof("payload") == "leadership":
        return "leadership: Leadership events are written by the election (LeaderElection), not published"
    return ""


class _SubmitMany(Protocol):
    async def submit_many(
        self,
        items: list[tuple[pb.Event, int]],
        *,
        require_term: int | None = None,
        deadline: float | None = None,
    ) -> list[asyncio.Future[Appended]]: ...


async def submit_fenced(
    appender: _SubmitMany, items: list[tuple[pb.Event, int]], *, deadline: float | None = None
) -> list[asyncio.Future[Appended]]:
    """Queue validated events, each run of equal terms as one group: an event with a term is
    appended only while the leader key holds that term (compared in the append transaction).
    ``deadline``: the publisher's (see :mod:`lvs_events.coordinator.appender`)."""
    futs: list[asyncio.Future[Appended]] = []
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i][0].term != items[start][0].term:
            term = items[start][0].term
            futs += await appender.submit_many(items[start:i], require_term=term or None, deadline=deadline)
            start = i
    return futs
