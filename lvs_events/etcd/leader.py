"""The election of the active director in etcd (:class:`EtcdLeaderStore`), next to the log.

Keys (``leader``, ``leader_info``, ``term``, ``last_leader``): :mod:`lvs_events.etcd.records`.
The append path's fencing compare (``require_term``) reads the ``leader`` key, so a stale term is
refused in the append transaction itself.

Every change of leader is ONE transaction: compare the leader key (absent for a campaign, or
holding the stale term for a takeover), the term counter and the log head; put the leader keys
with the new lease, the counter, and the Leadership events (log entries, ids, head).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from etcd3aio import EtcdError

from lvs_events import wire
from lvs_events.errors import StoreError, StoreUnavailable
from lvs_events.etcd.connection import (
    ELECTION_CHANNEL,
    ETCD_ERRORS,
    RETRYABLE_ERRORS,
    Connection,
    closed_channel_unavailable,
    compare_mod,
    translate,
)
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.records import ElectionOutcome, Head, KeepAliveOutcome, LeaderEvents, LeaderRecord
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.retry import Backoff, RetryPolicy

MAX_ELECTION_ATTEMPTS = 16  # transactions per call (lost races: the term or the head moved)
ELECTION_ERRORS = 3  # etcd errors per call before it fails (each is ambiguous: re-read first)
MIN_CALL_TIMEOUT = 0.05  # seconds: the least deadline a transaction is sent with
_ELECTION_RETRY = RetryPolicy(initial=0.02, cap=1.0)


@dataclass(frozen=True, slots=True)
class _LeaderView:
    leader_value: bytes | None
    info: LeaderRecord | None
    term: int
    term_mod: int
    head: Head
    last: LeaderRecord | None
    revision: int  # etcd revision read at

    @property
    def leader(self) -> LeaderRecord | None:
        """The leader's record while the leader key exists (the info key shares its lease)."""
        return self.info if self.leader_value is not None else None


# What an election call makes of the leader keys (EtcdLeaderStore._transact): decided without a
# write, or a transaction (compare, success ops) and the outcome if it succeeds.
_Plan = ElectionOutcome | tuple[list[Any], list[Any], ElectionOutcome]


class EtcdLeaderStore:
    """The election in etcd, in the same transactions as the log of ``events`` (whose keys and
    timeout it uses); implements the coordinator's ``LeaderStore``. It has its own connection
    (:data:`ELECTION_CHANNEL`: pick_first, fast keepalive), opened on first use."""

    def __init__(self, events: EtcdEventStore) -> None:
        self.timeout = events.timeout
        self.keys = events.keys
        self.cluster = events.cluster
        self.connection = Connection(
            events.endpoints,
            name="election",
            timeout=events.timeout,
            rpc_max_attempts=1,
            tuning=ELECTION_CHANNEL,
            appends=False,
            access=events.access,
        )

    async def connect(self) -> None:
        await self.connection.connect()

    async def close(self) -> None:
        await self.connection.close()

    def _left(self, deadline: float) -> float:
        return deadline - asyncio.get_running_loop().time()

    async def grant(self, ttl: int, *, within: float | None = None) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds; etcd may raise it to its minimum)."""
        await self.connect()
        try:
            resp = await self.connection.lease.grant(ttl, timeout=within or self.timeout, max_attempts=1)
        except ETCD_ERRORS as e:
            raise translate(e, "lease grant") from e
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int, *, within: float | None = None) -> None:
        """Revoke a lease (its keys go with it); an unknown or expired lease is not an error."""
        await self.connect()
        try:
            await self.connection.lease.revoke(lease_id, timeout=within or self.timeout, max_attempts=1)
        except ETCD_ERRORS as e:
            if _lease_not_found(e):
                return
            raise translate(e, "lease revoke") from e

    def _view_ops(self) -> list[Any]:
        kv = self.connection.kv
        k = self.keys
        return [kv.txn_op_get(key) for key in (k.leader, k.leader_info, k.term, k.head, k.last_leader)]

    async def _view(self, within: float) -> _LeaderView:
        await self.connect()
        try:
            resp = await self.connection.kv.txn([], self._view_ops(), timeout=within)
        except ETCD_ERRORS as e:
            raise translate(e, "read leader") from e
        return _parse_view(resp.responses, int(resp.header.revision), self.cluster)

    async def current(self, *, within: float | None = None) -> tuple[LeaderRecord | None, int, int]:
        """(leader or None, term counter, etcd revision): one linearizable read."""
        v = await self._view(within or self.timeout)
        return v.leader, v.term, v.revision

    def _log_ops(self, events: list[pb.Event], head: Head) -> tuple[list[Any], int]:
        """Puts appending ``events`` after ``head``, chained (as the append transaction does)."""
        kv = self.connection.kv
        ops = []
        rev = head.revision
        digest = head.hash
        for ev in events:
            rev += 1
            ev.revision = rev
            stored, digest = wire.seal(ev, digest)
            ops.append(kv.txn_op_put(self.keys.log_key(rev), stored))
            ops.append(kv.txn_op_put(self.keys.id_key(ev.event_id), str(rev)))
        ops.append(kv.txn_op_put(self.keys.head, Head(rev, digest).value()))
        return ops, rev

    def _head_compare(self, head: Head) -> Any:
        kv = self.connection.kv
        if head.revision:
            return kv.txn_compare_value(self.keys.head, head.value())
        return kv.txn_compare_create_revision(self.keys.head, 0)

    async def acquire(
        self,
        node: str,
        lease_id: int,
        *,
        address: str,
        expect_term: int | None,
        events_for: LeaderEvents,
        within: float | None = None,
    ) -> ElectionOutcome:
        """Become leader with ``lease_id``: if there is no leader (``expect_term`` None, a campaign)
        or the leader key holds ``expect_term`` (a takeover). One transaction (see above)."""
        kv = self.connection.kv
        k = self.keys

        def plan(view: _LeaderView) -> _Plan:
            if view.info is not None and view.info.lease_id == lease_id and view.leader_value:
                return ElectionOutcome(True, view.info, view.term)  # an earlier try landed
            if not _may_take(view, expect_term):
                return ElectionOutcome(False, view.leader, view.term)
            new_term = view.term + 1
            prev = view.last if view.last is not None and not view.last.ended else None
            log_ops, last_rev = self._log_ops(events_for(new_term, prev), view.head)
            record = LeaderRecord(node, new_term, lease_id, address, last_rev)
            compare = [
                kv.txn_compare_create_revision(k.leader, 0)
                if expect_term is None
                else kv.txn_compare_value(k.leader, str(expect_term)),
                compare_mod(k.term, view.term_mod),
                self._head_compare(view.head),
            ]
            success = [
                kv.txn_op_put(k.leader, str(new_term), lease=lease_id),
                kv.txn_op_put(k.leader_info, record.to_json(), lease=lease_id),
                kv.txn_op_put(k.term, str(new_term)),
                kv.txn_op_put(k.last_leader, record.to_json()),
                *log_ops,
            ]
            return compare, success, ElectionOutcome(True, record, new_term)

        # a failed compare (the term counter or the log head moved) plans again on fresh values
        outcome, _ = await self._transact(plan, "election", within)
        return outcome

    async def _transact(
        self, plan: Callable[[_LeaderView], _Plan], what: str, within: float | None
    ) -> tuple[ElectionOutcome, float]:
        """The loop of an election transaction: read the leader keys, ``plan`` either decides
        without writing (an outcome) or gives (compare, success, outcome if it succeeds); a
        failed compare returns fresh keys in its failure branch and ``plan`` runs again on them;
        an etcd error (ambiguous: the transaction may have landed) re-reads them, within
        :data:`ELECTION_ERRORS` errors and the deadline. Returns the outcome and the deadline
        (the event loop's clock)."""
        await self.connect()
        kv = self.connection.kv
        deadline = asyncio.get_running_loop().time() + (within or self.timeout)
        backoff = _ELECTION_RETRY.start()
        view: _LeaderView | None = None
        for _ in range(MAX_ELECTION_ATTEMPTS):
            left = self._left(deadline)
            if left <= 0:
                break
            try:
                if view is None:
                    view = await self._view(left)
                decided = plan(view)
                if isinstance(decided, ElectionOutcome):
                    return decided, deadline
                compare, success, outcome = decided
                resp = await kv.txn(compare, success, self._view_ops(), timeout=max(MIN_CALL_TIMEOUT, left))
            except RETRYABLE_ERRORS as e:
                view = None
                await self._retry_or_raise(e, backoff, deadline, what)
                continue
            if resp.succeeded:
                return outcome, deadline
            view = _parse_view(resp.responses, int(resp.header.revision), self.cluster)
        raise StoreUnavailable(f"{what}: no decision within the deadline")

    async def _retry_or_raise(self, e: BaseException, backoff: Backoff, deadline: float, what: str) -> None:
        """After an etcd error: wait before the next attempt, or raise when none is left."""
        if backoff.failures + 1 >= ELECTION_ERRORS or self._left(deadline) <= 0:
            if isinstance(e, StoreError):
                raise e
            raise translate(e, what) from e
        await backoff.sleep()

    async def keepalive(self, lease_id: int, term: int, *, within: float | None = None) -> KeepAliveOutcome:
        """Refresh the lease and read (linearizably) whether the leader key still holds ``term``
        with this lease; both at once."""
        await self.connect()
        t = within or self.timeout
        lease = self.connection.lease

        async def refresh() -> int:
            call = lease.keep_alive(lease_id)
            try:
                async for resp in call:  # the answer to the one request sent
                    return int(resp.TTL)
            finally:
                call.cancel()
            return 0  # etcd ended the stream without an answer

        try:
            async with asyncio.timeout(t):
                ttl, view = await asyncio.gather(refresh(), self._view(t))
        except ETCD_ERRORS as e:
            raise translate(e, "keepalive") from e
        info = view.leader
        held = (
            ttl > 0
            and view.leader_value == str(term).encode()
            and info is not None
            and info.lease_id == lease_id
        )
        return KeepAliveOutcome(held, ttl, info, view.term)

    async def resign(
        self, node: str, term: int, *, events_for: LeaderEvents, within: float | None = None
    ) -> ElectionOutcome:
        """Delete the leader keys if they hold ``term`` (and log the LOST event); revoke the lease."""
        kv = self.connection.kv
        k = self.keys
        ending: list[int] = []  # the lease of the leadership this resign ends

        def plan(view: _LeaderView) -> _Plan:
            if view.leader_value != str(term).encode() or view.info is None:
                return ElectionOutcome(False, view.leader, view.term)
            info = view.info
            log_ops, _ = self._log_ops(events_for(view.term, info), view.head)
            compare = [kv.txn_compare_value(k.leader, str(term)), self._head_compare(view.head)]
            success = [
                kv.txn_op_delete(k.leader),
                kv.txn_op_delete(k.leader_info),
                kv.txn_op_put(k.last_leader, info.ending().to_json()),
                *log_ops,
            ]
            ending[:] = [info.lease_id]
            return compare, success, ElectionOutcome(True, None, view.term)

        outcome, deadline = await self._transact(plan, "resign", within)
        if outcome.acquired:
            with contextlib.suppress(StoreError):
                await self.revoke(ending[0], within=max(MIN_CALL_TIMEOUT, self._left(deadline)))
        return outcome

    async def watch(self, start_revision: int) -> AsyncIterator[tuple[LeaderRecord | None, int]]:
        """Changes of the leader from etcd revision ``start_revision``: (leader or None, etcd
        revision). Ends (StoreUnavailable) when the watch breaks; re-read and watch again."""
        await self.connect()
        stream = self.connection.watch.watch(self.keys.leader_info, start_revision=start_revision)
        try:
            with closed_channel_unavailable("watch leader"):
                async for resp in stream:
                    if resp.compact_revision > 0 or resp.canceled:
                        raise StoreUnavailable("leader watch cancelled (compaction)")
                    for ev in resp.events:
                        rev = int(ev.kv.mod_revision) or int(resp.header.revision)
                        if ev.type == 0:
                            yield LeaderRecord.from_json(ev.kv.value), rev
                        else:
                            yield None, int(resp.header.revision)
        except ETCD_ERRORS as e:
            raise translate(e, "watch leader") from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        raise StoreUnavailable("etcd closed the leader watch")


def _parse_view(rs: Any, revision: int, cluster: str) -> _LeaderView:
    leader_kvs, info_kvs, term_kvs, head_kvs, last_kvs = (r.response_range.kvs for r in rs[:5])
    return _LeaderView(
        leader_value=bytes(leader_kvs[0].value) if leader_kvs else None,
        info=LeaderRecord.from_json(info_kvs[0].value) if info_kvs else None,
        term=int(term_kvs[0].value) if term_kvs else 0,
        term_mod=int(term_kvs[0].mod_revision) if term_kvs else 0,
        head=Head.parse(head_kvs[0].value if head_kvs else None, cluster),
        last=LeaderRecord.from_json(last_kvs[0].value) if last_kvs else None,
        revision=revision,
    )


def _may_take(view: _LeaderView, expect_term: int | None) -> bool:
    if expect_term is None:
        return view.leader_value is None
    return view.leader_value == str(expect_term).encode()


def _lease_not_found(e: BaseException) -> bool:
    """etcd's answer to revoking a lease that expired or was revoked already."""
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code() == grpc.StatusCode.NOT_FOUND
    return isinstance(e, EtcdError) and "not found" in str(e).lower()


__all__ = ["EtcdLeaderStore"]
