"""The event store: the log in etcd (:class:`EtcdEventStore`; keys in :mod:`lvs_events.etcd.records`).

Appends: one etcd transaction per batch (:mod:`lvs_events.etcd.txn`). Duplicates get their
ORIGINAL revision back.

Pipelining: while one append's transaction is in flight, the next may be sent at once, predicated
on the first one landing: it compares ``head`` with the first one's predicted end and the first
one's last ``ids/<id>`` with that revision. If the first fails, so does the second, which then
waits for the first to finish before it retries: batches land in the order they were submitted.

Reads pin an etcd revision ``R``: range-read ``log/`` from N at ``R`` (paginated), then watch the
prefix from ``R + 1``. Revisions are dense, so a gap or a repeat is detected by arithmetic: the
reader tracks the last revision it delivered, skips anything at or below it and re-reads on a gap,
on a watch cancellation (etcd compaction) and on any reconnect.

Snapshots: chunks are written first, then the manifest swaps in one compare-and-swap; a reader
reads the manifest and its chunks at one etcd revision, so a concurrent writer never shows it half
a snapshot; older chunk sets are deleted after the swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio
import structlog
from etcd3aio import prefix_range_end
from google.protobuf.message import DecodeError

from lvs_events.errors import Compacted, DeadlinePassed, Fenced, StoreError, StoreUnavailable
from lvs_events.etcd import txn as txns
from lvs_events.etcd.connection import (
    CERT_CHECK,
    DEFAULT_TIMEOUT,
    ETCD_ERRORS,
    PLAINTEXT,
    RETRYABLE_ERRORS,
    Connection,
    EtcdAccess,
    closed_channel_unavailable,
    compare_mod,
    is_compacted,
    translate,
)
from lvs_events.etcd.records import (
    SNAPSHOT_CHUNK,
    Appended,
    Bounds,
    Head,
    Keys,
    LogItem,
    Manifest,
    SnapshotRecord,
    expiry_index_op,
    pack_snapshot,
    parse_expiries,
    unpack_snapshot,
)
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.retry import Backoff, RetryPolicy

log = structlog.get_logger(__name__)

DEFAULT_PAGE = 256  # log entries per range read
MAX_APPEND_ATTEMPTS = 8  # etcd errors per append
MAX_CAS_CONFLICTS = 500  # lost CAS races per append
MAX_REREADS = 64  # consecutive re-reads of a subscription without progress before giving up
_NOSPACE = 1  # etcdserverpb.AlarmType.NOSPACE
SNAPSHOT_READS = 3  # reads of a snapshot whose chunks etcd compacted away under the read

_APPEND_RETRY = RetryPolicy(initial=0.02, cap=1.0)  # after an etcd error (the attempt may have landed)
_REREAD_RETRY = RetryPolicy(initial=0.05, cap=2.0)  # a subscription re-reading without progress
# Every 4th lost race in a row waits a random 0-2 ms: two appenders in lockstep otherwise keep
# invalidating each other's compare on ``head``.
_LOCKSTEP_BREAK = RetryPolicy(initial=0.002, cap=0.002, jitter=1.0)


class _EtcdCompacted(Exception):
    """Internal: the pinned etcd revision was compacted; start the read over."""


class _TooLarge(Exception):
    """Internal: etcd's answer exceeded the client's message limit (large events): read less at
    once."""


def _too_large(e: BaseException) -> bool:
    """gRPC's refusal of a message over the channel's receive limit (4 MiB by default)."""
    return isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class _Gap(Exception):
    def __init__(self, seen: int) -> None:
        super().__init__(f"watch delivered revision {seen} ahead of the next expected")
        self.seen = seen


@dataclass(slots=True)
class _Slot:
    """One append call, for the call made after it: ``predicted`` is (id of the last event,
    head) its transaction in flight would leave; None when none is in flight. ``done``
    resolves when the call has finished (succeeded or given up)."""

    done: asyncio.Future[None]
    predicted: tuple[str, Head] | None = None


class EtcdEventStore:
    """The log, its snapshots and retention in etcd; implements the coordinator's ``EventStore``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        cluster: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE,
        max_append_attempts: int = MAX_APPEND_ATTEMPTS,
        max_txn_ops: int = txns.MAX_TXN_OPS,
        bytes_txn: bool = True,
        access: EtcdAccess = PLAINTEXT,
        cert_check: float = CERT_CHECK,
    ) -> None:
        """``max_txn_ops``: etcd's ``--max-txn-ops`` (bounds the events per append).
        ``bytes_txn``: False sends appends through etcd3aio's public ``txn`` (see
        :mod:`lvs_events.etcd.bypass`). ``access``: TLS and etcd user (the election's
        connection uses the same). ``cert_check``: seconds between looks at the TLS files
        for a rotation (:mod:`lvs_events.etcd.connection`)."""
        self.access = access
        self.connection = Connection(
            endpoints, name="log", timeout=timeout, bytes_txn=bytes_txn, access=access, cert_check=cert_check
        )
        self.endpoints = self.connection.endpoints
        self.cluster = cluster
        self.timeout = timeout
        self.page_size = page_size
        self.max_append_attempts = max_append_attempts
        self._max_batch_events = txns.batch_limit(max_txn_ops)
        self._max_txn_ops = max_txn_ops
        self.keys = Keys.of(cluster)
        self._snapshot_cache: SnapshotRecord | None = None  # the last one read or written
        # the head (revision and chain hash) as last seen: the CAS guess for the next append. A
        # wrong guess costs one failed transaction, which returns the right values.
        self._head_guess: Head | None = None
        self._last_slot: _Slot | None = None  # the newest append call (pipelining)
        self._compacted = 0  # the etcd revision this store last compacted to (or saw compacted)

    @property
    def max_batch_events(self) -> int:
        """Most events one :meth:`append` takes (one transaction under etcd's ``--max-txn-ops``)."""
        return self._max_batch_events

    def fits(self, events: int, indexed: int) -> bool:
        """Whether ``events`` events, ``indexed`` of them :meth:`indexed`, make one :meth:`append`
        (one transaction under etcd's ``--max-txn-ops``)."""
        return txns.fits(self._max_txn_ops, events, indexed)

    def indexed(self, event: pb.Event) -> bool:
        """Whether appending ``event`` changes the expiry index (one more op of its transaction,
        see :meth:`fits`)."""
        return expiry_index_op(self.keys, event) is not None

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.connection.connect()

    async def close(self) -> None:
        await self.connection.close()

    async def __aenter__(self) -> EtcdEventStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def raw(self) -> Connection:
        """The connection (etcd3aio's services), for tests and the benchmark only."""
        await self.connect()
        return self.connection

    def log_key(self, revision: int) -> bytes:
        return self.keys.log_key(revision)

    def id_key(self, event_id: str) -> bytes:
        return self.keys.id_key(event_id)

    # --- reads ----------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            await self.connection.kv.get(self.keys.head, serializable=True, timeout=self.timeout)
        except ETCD_ERRORS as e:
            raise translate(e, "ping") from e

    async def db_status(self) -> tuple[int, int, bool]:
        """The etcd database's size and quota in bytes (of the member answering; quota 0: that
        etcd does not report it) and whether the cluster has the NOSPACE alarm raised."""
        m = self.connection.maintenance
        try:
            status = await m.status(timeout=self.timeout)
            alarms = await m.alarms(timeout=self.timeout)
        except ETCD_ERRORS as e:
            raise translate(e, "status") from e
        nospace = any(int(a.alarm) == _NOSPACE for a in alarms.alarms)
        return int(status.dbSize), int(status.dbSizeQuota), nospace

    async def bounds(self) -> Bounds:
        bounds, _ = await self._bounds_at()
        return bounds

    async def _bounds_at(self) -> tuple[Bounds, int]:
        """Head and first, and the etcd revision they were read at (one transaction)."""
        kv = self.connection.kv
        try:
            resp = await kv.txn(
                [], [kv.txn_op_get(self.keys.head), kv.txn_op_get(self.keys.first)], timeout=self.timeout
            )
        except ETCD_ERRORS as e:
            raise translate(e, "read head") from e
        head_kvs = resp.responses[0].response_range.kvs
        first_kvs = resp.responses[1].response_range.kvs
        head = Head.parse(head_kvs[0].value if head_kvs else None, self.cluster).revision
        first = int(first_kvs[0].value) if first_kvs else 1
        return Bounds(head, first), int(resp.header.revision)

    async def get_snapshot(self) -> SnapshotRecord | None:
        """The newest snapshot. Its chunks are read only when it is not the one last seen."""
        for _ in range(SNAPSHOT_READS):
            manifest, _, at = await self._get_manifest()
            if manifest is None:
                return None
            cached = self._snapshot_cache
            if cached is not None and cached.revision == manifest.revision:
                return cached
            try:
                packed = await self._read_chunks(manifest, at)
            except _EtcdCompacted:
                continue
            try:
                state = await asyncio.to_thread(unpack_snapshot, packed, manifest)
            except (ValueError, zlib.error) as e:
                raise StoreError(f"snapshot at revision {manifest.revision} is not readable: {e}") from e
            try:
                chain_head = bytes.fromhex(manifest.chain_head)
            except ValueError as e:
                raise StoreError(f"snapshot at revision {manifest.revision}: chain_head is not hex") from e
            record = SnapshotRecord(manifest.revision, state, manifest.table_digest, chain_head)
            self._snapshot_cache = record
            return record
        raise StoreUnavailable(f"snapshot: etcd compacted it away under {SNAPSHOT_READS} reads")

    async def snapshot_revision(self) -> int:
        manifest, _, _ = await self._get_manifest()
        return manifest.revision if manifest is not None else 0

    async def _get_manifest(self) -> tuple[Manifest | None, int, int]:
        """The manifest, its key's mod_revision (0: absent) and the etcd revision read at."""
        try:
            resp = await self.connection.kv.get(self.keys.snapshot, timeout=self.timeout)
        except ETCD_ERRORS as e:
            raise translate(e, "read snapshot") from e
        at = int(resp.header.revision)
        if not resp.kvs:
            return None, 0, at
        kv = resp.kvs[0]
        return Manifest.from_json(kv.value), int(kv.mod_revision), at

    async def _read_chunks(self, manifest: Manifest, at: int) -> bytes:
        """The manifest's chunks as they were at etcd revision ``at`` (a few per read: the
        client receives at most 4 MiB per message)."""
        prefix = self.keys.chunk_prefix(manifest.revision, manifest.writer)
        end = prefix_range_end(prefix)
        start = prefix
        parts: list[bytes] = []
        kv = self.connection.kv
        while True:
            try:
                resp = await kv.get(start, range_end=end, revision=at, limit=4, timeout=self.timeout)
            except ETCD_ERRORS as e:
                if is_compacted(e):
                    raise _EtcdCompacted from e
                raise translate(e, "read snapshot chunks") from e
            parts.extend(bytes(item.value) for item in resp.kvs)
            if not resp.more or not resp.kvs:
                break
            start = bytes(resp.kvs[-1].key) + b"\0"
        if len(parts) != manifest.chunks:
            raise StoreError(
                f"snapshot at revision {manifest.revision}: expected {manifest.chunks} chunks,"
                f" found {len(parts)}"
            )
        return b"".join(parts)

    async def _range_page(self, start: int, stop: int, at: int) -> list[tuple[int, bytes]]:
        """Log entries (revision, value) with start <= revision < stop, read at etcd revision ``at``."""
        try:
            resp = await self.connection.kv.get(
                self.log_key(start),
                range_end=self.log_key(stop),
                revision=at,
                limit=self.page_size,
                timeout=self.timeout,
            )
        except ETCD_ERRORS as e:
            if is_compacted(e):
                raise _EtcdCompacted from e
            if _too_large(e):
                raise _TooLarge from e
            raise translate(e, "read log") from e
        n = len(self.keys.log)
        return [(int(item.key[n:]), item.value) for item in resp.kvs]

    async def read(self, from_revision: int, *, follow: bool, to_revision: int = 0) -> AsyncIterator[LogItem]:
        """Events with revision >= ``from_revision`` (and <= ``to_revision`` when not 0).

        Without ``follow`` the read ends at the head as of its start (or ``to_revision``).
        With ``follow`` it catches up, then watches; a reconnect, a gap or an etcd compaction
        makes it re-read from the last delivered revision, so nothing is lost or repeated.
        Raises :class:`Compacted` when ``from_revision`` (or, while following, the next revision
        wanted) is below the oldest kept revision.
        """
        nxt = max(from_revision, 1)
        backoff: Backoff = _REREAD_RETRY.start()
        while True:
            progress_from = nxt
            try:
                async for item in self._read_once(nxt, follow=follow, to_revision=to_revision):
                    nxt = item.event.revision + 1
                    yield item
            except _EtcdCompacted:
                log.info("etcd compacted under a read; re-reading", next_revision=nxt)
            except _Gap as gap:
                log.warning("gap in the watch; re-reading", next_revision=nxt, seen=gap.seen)
            except _TooLarge:
                # a watch message of many large events: the range read pages by size
                log.info("watch message over the size limit; re-reading", next_revision=nxt)
            except StoreUnavailable as e:
                if not follow:
                    raise
                log.warning("etcd unavailable while following; retrying", next_revision=nxt, error=str(e))
            else:
                return
            if nxt > progress_from:
                backoff.reset()
            if backoff.failures >= MAX_REREADS:
                raise StoreUnavailable(f"log read stuck at revision {nxt} after {backoff.failures} attempts")
            await backoff.sleep()

    async def _read_once(self, nxt: int, *, follow: bool, to_revision: int) -> AsyncIterator[LogItem]:
        bounds, at = await self._bounds_at()
        if nxt < bounds.first:
            raise Compacted(nxt, bounds.first)
        stop = 0 if follow else bounds.head + 1
        if to_revision:
            stop = min(stop, to_revision + 1) if stop else to_revision + 1
        head = bounds.head
        # 1. catch up: paginated range read pinned at etcd revision `at`
        async for item in self._catch_up(nxt, stop, at, head):
            nxt = item.event.revision + 1
            yield item
        if not follow or (stop and nxt >= stop):
            return
        # 2. follow: watch the log from the etcd revision after the one the range was read at
        async for item in self._follow(nxt, stop, at + 1, head):
            yield item

    async def _catch_up(self, nxt: int, stop: int, at: int, head: int) -> AsyncIterator[LogItem]:
        """The log from ``nxt`` up to ``stop`` (0: the head as of ``at``), read at etcd revision
        ``at``, a page at a time.

        Each page is the exact key range of its revisions (the log is dense), not "from here to
        the end, limit N": etcd counts every key of a range to answer it, even with a limit, so
        open-ended pages would make a full read quadratic in the length of the log.
        """
        end = min(stop, head + 1) if stop else head + 1
        # Events of up to MAX_EVENT_BYTES each can make a page of ``page_size`` exceed the
        # client's 4 MiB receive limit: such a page is read again at half the size (down to one
        # event, always under the limit), and the size grows back as pages go through.
        page = self.page_size
        while nxt < end:
            page_stop = min(nxt + page, end)
            try:
                entries = await self._range_page(nxt, page_stop, at)
            except _TooLarge:
                if page == 1:
                    raise StoreError(f"log entry {nxt} is larger than a gRPC message may be") from None
                page = max(1, page // 2)
                continue
            page = min(self.page_size, page * 2)
            for rev, blob in entries:
                if rev != nxt:
                    # trimmed while we read (then Compacted), or a hole (a broken log)
                    await self._not_dense(nxt, rev)
                yield LogItem(_parse(blob, rev), max(head, rev))
                nxt = rev + 1
            if nxt < page_stop:  # the page ended early: trimmed before `at`, or a hole
                await self._not_dense(nxt, None)

    async def _not_dense(self, nxt: int, found: int | None) -> NoReturn:
        bounds, _ = await self._bounds_at()
        if nxt < bounds.first:
            raise Compacted(nxt, bounds.first)
        raise StoreError(f"log is not dense: expected revision {nxt}, found {found or 'nothing'}")

    async def _follow(self, nxt: int, stop: int, start_revision: int, head: int) -> AsyncIterator[LogItem]:
        k_log = self.keys.log
        n = len(k_log)
        stream = self.connection.watch.watch(
            k_log, range_end=prefix_range_end(k_log), start_revision=start_revision
        )
        try:
            with closed_channel_unavailable("watch log"):
                async for resp in stream:
                    if resp.compact_revision > 0 or resp.canceled:
                        raise _EtcdCompacted
                    for ev in resp.events:
                        if ev.type != 0:  # DELETE: retention trimming, not news
                            continue
                        rev = int(ev.kv.key[n:])
                        if rev < nxt:
                            continue  # already delivered (a watch resumed from an older revision)
                        if rev > nxt:
                            raise _Gap(rev)
                        head = max(head, rev)
                        yield LogItem(_parse(ev.kv.value, rev), head)
                        nxt = rev + 1
                        if stop and nxt >= stop:
                            return
        except ETCD_ERRORS as e:
            if _too_large(e):
                raise _TooLarge from e
            raise translate(e, "watch log") from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        raise StoreUnavailable("etcd closed the watch stream")

    # --- append ---------------------------------------------------------------------------

    async def append(
        self, events: Sequence[pb.Event], *, require_term: int | None = None, within: float | None = None
    ) -> list[Appended]:
        """Append ``events`` (unique event_ids) atomically, in order; duplicates are not
        re-appended. With ``require_term`` only while the ``leader`` key holds that term (else
        :class:`Fenced`). Concurrent calls are pipelined: a call made while an earlier one is in
        flight sends its transaction at once, predicated on the earlier one succeeding (see
        :class:`_Slot`); batches land in the order the calls were made.

        ``within``: the callers' deadline, in seconds. No transaction is sent after it, and
        each one's etcd deadline ends with it; past it :class:`DeadlinePassed` (``sent``: an
        attempt went out, its outcome unknown)."""
        if not events:
            return []
        if len(events) > 1 and len({e.event_id for e in events}) != len(events):
            raise ValueError("append: event_ids in one batch must be unique (dedupe first)")
        if len(events) > self._max_batch_events:
            raise ValueError(f"append: at most {self._max_batch_events} events per transaction")
        indexed = sum(1 for e in events if self.indexed(e))
        if not self.fits(len(events), indexed):
            raise ValueError(
                f"append: {len(events)} events, {indexed} changing the expiry index, are more than"
                f" one transaction of at most {self._max_txn_ops} ops takes"
            )
        prev, slot = self._last_slot, _Slot(asyncio.get_running_loop().create_future())
        self._last_slot = slot
        try:
            return await self._append_chained(list(events), require_term, prev, slot, within)
        finally:
            slot.predicted = None
            slot.done.set_result(None)
            if self._last_slot is slot:
                self._last_slot = None

    async def _append_chained(  # noqa: PLR0912, PLR0915 -- one CAS loop, its exits together
        self,
        events: list[pb.Event],
        require_term: int | None,
        prev: _Slot | None,
        slot: _Slot,
        within: float | None,
    ) -> list[Appended]:
        """CAS loop. Two bounds: ``max_append_attempts`` etcd errors, and for lost races (another
        appender moved ``head`` first) :data:`MAX_CAS_CONFLICTS` retries within ``4 x timeout``.
        A lost race is retried at once: its failure branch already returned the fresh head.

        The first attempt may be *chained* behind ``prev`` (the append made just before this one,
        still in flight): it assumes ``prev`` lands and compares that ``prev``'s last event id is
        at the predicted head. Any failure first waits for ``prev`` to finish, so a retried batch
        never lands before an earlier one."""
        results: dict[str, Appended] = {}
        pending = events
        conflicts = 0
        errors = _APPEND_RETRY.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4 * self.timeout
        callers = None if within is None else loop.time() + within  # no attempt starts after it
        sent = False
        predicted = prev.predicted if prev is not None and not prev.done.done() else None
        after: tuple[str, int] | None = None
        guess: Head | None
        if predicted is not None:
            after = (predicted[0], predicted[1].revision)
            guess = predicted[1]
        else:
            if prev is not None:
                await prev.done
            guess = self._head_guess
        while True:
            try:
                budget = self._budget(callers, sent)
                if guess is None:
                    guess = await self._read_head(budget)
                    budget = self._budget(callers, sent)
                request, assigned, leaves = txns.append_txn(self.keys, pending, guess, after, require_term)
                slot.predicted = (pending[-1].event_id, leaves)
                sent = True
                resp = await self.connection.append_txn(request, budget)
            except DeadlinePassed:
                slot.predicted = None
                for ev in pending:
                    ev.revision = 0
                self._head_guess = None
                raise
            except RETRYABLE_ERRORS as e:
                # Ambiguous: the transaction may have been applied. The next attempt finds out
                # (its id compares fail and return the revisions), so nothing is appended twice.
                slot.predicted = None
                for ev in pending:
                    ev.revision = 0
                self._head_guess = guess = None
                if errors.failures + 1 >= self.max_append_attempts:
                    if isinstance(e, StoreUnavailable):
                        raise
                    raise translate(e, "append") from e
                log.warning("append failed; retrying", attempt=errors.failures + 1, error=str(e))
                if after is not None and prev is not None:
                    await prev.done
                after = None
                await errors.sleep()
                continue
            if resp.succeeded:
                if self._head_guess is None or leaves.revision > self._head_guess.revision:
                    self._head_guess = leaves
                results.update((a.event_id, a) for a in assigned)
                return [results[ev.event_id] for ev in events]
            slot.predicted = None
            if after is not None:
                # chained behind `prev`: it may have failed; let it finish (and retry) first
                assert prev is not None
                await prev.done
                after = None
            guess, pending = self._after_failure(resp, pending, results, require_term)
            if self._head_guess is not None and self._head_guess.revision > guess.revision:
                guess = self._head_guess  # `prev` landed after our transaction was evaluated
            self._head_guess = guess
            if not pending:
                return [results[ev.event_id] for ev in events]
            conflicts += 1
            if conflicts >= MAX_CAS_CONFLICTS or loop.time() > deadline:
                raise StoreUnavailable(f"append: head kept moving; gave up after {conflicts} lost races")
            if conflicts % 4 == 0:
                await asyncio.sleep(_LOCKSTEP_BREAK.delay(1, random.random()))

    def _after_failure(
        self,
        resp: Any,
        pending: list[pb.Event],
        results: dict[str, Appended],
        require_term: int | None,
    ) -> tuple[Head, list[pb.Event]]:
        """Read the failure branch ([head, ids..., leader?]): the new head guess, what is left."""
        rs = resp.responses
        head_kvs = rs[0].response_range.kvs
        guess = Head.parse(head_kvs[0].value if head_kvs else None, self.cluster)
        still: list[pb.Event] = []
        for i, ev in enumerate(pending):
            ev.revision = 0
            id_kvs = rs[1 + i].response_range.kvs
            if id_kvs:
                results[ev.event_id] = Appended(ev.event_id, int(id_kvs[0].value), duplicate=True)
            else:
                still.append(ev)
        if require_term is not None:
            leader_kvs = rs[1 + len(pending)].response_range.kvs
            current = leader_kvs[0].value.decode() if leader_kvs else ""
            if current != str(require_term):
                raise Fenced(f"leader term is {current or 'unset'}, not {require_term}: append refused")
        return guess, still

    def _budget(self, callers: float | None, sent: bool) -> float:
        """Seconds the next etcd call of an append may take: the store's timeout, cut at the
        callers' deadline (``callers``, the event loop's clock); :class:`DeadlinePassed` once
        it is reached (``sent``: an earlier attempt went out)."""
        if callers is None:
            return self.timeout
        left = callers - asyncio.get_running_loop().time()
        if left <= 0:
            raise DeadlinePassed(
                "the caller's deadline passed before the append was "
                + ("retried: its outcome is unknown" if sent else "sent: nothing appended"),
                sent=sent,
            )
        return min(self.timeout, left)

    async def _read_head(self, within: float | None = None) -> Head:
        try:
            resp = await self.connection.kv.get(self.keys.head, timeout=within or self.timeout)
        except ETCD_ERRORS as e:
            raise translate(e, "read head") from e
        return Head.parse(resp.kvs[0].value if resp.kvs else None, self.cluster)

    async def head(self) -> Head:
        """The last revision and the hash chain's value there (one linearizable read)."""
        return await self._read_head()

    # --- snapshots and retention ----------------------------------------------------------

    async def put_snapshot(self, snapshot: SnapshotRecord) -> bool:
        """Store ``snapshot`` unless a newer (or equal) one is there; True when written.

        Chunks first, then the manifest by compare-and-swap, then older chunk sets go. A writer
        that loses the swap (another coordinator wrote a newer snapshot meanwhile) deletes its
        own chunks; a crash between the steps leaves chunks that the next successful snapshot
        deletes (everything below its own revision)."""
        manifest, mod, _ = await self._get_manifest()
        if manifest is not None and manifest.revision >= snapshot.revision:
            return False
        packed, digest = await asyncio.to_thread(pack_snapshot, snapshot.state)
        writer = uuid.uuid4().hex[:12]
        prefix = self.keys.chunk_prefix(snapshot.revision, writer)
        chunks = [packed[i : i + SNAPSHOT_CHUNK] for i in range(0, len(packed), SNAPSHOT_CHUNK)]
        new = Manifest(
            revision=snapshot.revision,
            table_digest=snapshot.table_digest,
            writer=writer,
            chunks=len(chunks),
            nbytes=len(packed),
            state_bytes=len(snapshot.state),
            sha256=digest,
            chain_head=snapshot.chain_head.hex(),
        )
        kv = self.connection.kv
        swapped = False
        try:
            for i, chunk in enumerate(chunks):
                await kv.put(prefix + f"{i:06d}".encode(), chunk, timeout=self.timeout)
            for _ in range(3):
                resp = await kv.txn(
                    [compare_mod(self.keys.snapshot, mod)],
                    [kv.txn_op_put(self.keys.snapshot, new.to_json())],
                    timeout=self.timeout,
                )
                if resp.succeeded:
                    swapped = True
                    break
                manifest, mod, _ = await self._get_manifest()
                if manifest is not None and manifest.revision >= snapshot.revision:
                    break
        except ETCD_ERRORS as e:
            raise translate(e, "write snapshot") from e
        finally:
            if not swapped:
                with contextlib.suppress(*ETCD_ERRORS, StoreUnavailable):
                    await kv.delete(prefix, range_end=prefix_range_end(prefix), timeout=self.timeout)
        if not swapped:
            return False
        self._snapshot_cache = snapshot
        try:  # everything older than this snapshot's chunks (a failure here only leaves garbage)
            await kv.delete(self.keys.snapshots, range_end=prefix, timeout=self.timeout)
        except ETCD_ERRORS as e:
            log.warning("old snapshot chunks not deleted; the next snapshot retries", error=str(e))
        return True

    async def trim(self, keep_from: int) -> int:
        """Advance ``first`` to ``keep_from`` (never backwards), then delete what lies below it
        (events and their ids); the number of events deleted.

        Crash-safe and idempotent: ``first`` moves first (readers stop asking for older events),
        then each page of old entries goes together with its ids in one transaction; a later
        trim finishes what an interrupted one left.
        """
        kv = self.connection.kv
        k_first = self.keys.first
        bounds, _ = await self._bounds_at()
        target = min(keep_from, bounds.head + 1)
        if target > bounds.first:
            try:
                await kv.txn(
                    [kv.txn_compare_value(k_first, str(bounds.first))]
                    if bounds.first > 1
                    else [kv.txn_compare_create_revision(k_first, 0)],
                    [kv.txn_op_put(k_first, str(target))],
                    timeout=self.timeout,
                )
            except ETCD_ERRORS as e:
                raise translate(e, "advance first") from e
        bounds, _ = await self._bounds_at()
        first = bounds.first
        deleted = 0
        page = txns.MAX_BATCH_EVENTS
        n = len(self.keys.log)
        lo: int | None = None
        while True:
            # Pages are exact key ranges [lo, lo + page): etcd counts every key of a range to
            # answer it, so "everything below first, limit N" would make a big trim quadratic.
            try:
                if lo is None:  # the oldest entry left (once, and once more at the end)
                    resp = await kv.get(
                        self.keys.log,
                        range_end=self.log_key(first),
                        limit=1,
                        keys_only=True,
                        timeout=self.timeout,
                    )
                    if not resp.kvs:
                        return deleted
                    lo = int(resp.kvs[0].key[n:])
                hi = min(lo + page, first)
                resp = await kv.get(self.log_key(lo), range_end=self.log_key(hi), timeout=self.timeout)
            except ETCD_ERRORS as e:
                if _too_large(e) and page > 1:  # large events: fewer per read (see _catch_up)
                    page //= 2
                    continue
                raise translate(e, "read old log") from e
            lo = hi if hi < first else None
            if not resp.kvs:
                continue
            ops = []
            for item in resp.kvs:
                msg = pb.Event()
                with contextlib.suppress(DecodeError):  # a damaged entry goes without its id
                    msg.ParseFromString(item.value)
                if msg.event_id:
                    ops.append(kv.txn_op_delete(self.id_key(msg.event_id)))
                ops.append(kv.txn_op_delete(item.key))
            try:
                await kv.txn([], ops, timeout=self.timeout)
            except ETCD_ERRORS as e:
                raise translate(e, "trim log") from e
            deleted += len(resp.kvs)

    async def compact_history(self, keep_revisions: int) -> int | None:
        """Compact etcd's MVCC history to ``keep_revisions`` etcd revisions behind the current one;
        the revision compacted to, or None when nothing was.

        Every append rewrites ``head`` and every trim deletes keys: without compaction etcd keeps
        every old version, its database grows without bound and at its quota (2 GiB by default)
        it raises the NOSPACE alarm and refuses all writes. Readers here need no history older
        than a read in progress (a read or watch that finds its revision compacted starts over
        from the log, and the leader watch from the current leader), so a window of
        ``keep_revisions`` is plenty. Compaction is cluster-wide: with an etcd shared with other
        programs, or one compacted by its own ``--auto-compaction-*`` flags, turn this off
        (``--etcd-history 0``). A revision already compacted (by etcd or another coordinator)
        is not an error. Freed pages are reused; giving the space back to the file system is
        ``etcdctl defrag``'s job (docs/operations.md).
        """
        if keep_revisions <= 0:
            return None
        _, at = await self._bounds_at()
        target = at - keep_revisions
        if target <= self._compacted:
            return None
        try:
            await self.connection.kv.compact(target, timeout=self.timeout)
        except ETCD_ERRORS as e:
            if not is_compacted(e):
                raise translate(e, "compact history") from e
            self._compacted = target  # compacted past it already
            return None
        self._compacted = target
        return target

    # --- the expiry index (keys in lvs_events.etcd.records) ---------------------------------

    async def expiries(self) -> tuple[dict[int, float], int]:
        """The expiry index (override revision -> expires_at) and the etcd revision it was read
        at (a :meth:`watch_expiries` from the next one misses nothing)."""
        start = self.keys.expiries
        try:
            resp = await self.connection.kv.get(
                start, range_end=prefix_range_end(start), timeout=self.timeout
            )
        except ETCD_ERRORS as e:
            raise translate(e, "read expiry index") from e
        entries = parse_expiries(self.keys, [(kv.key, kv.value) for kv in resp.kvs])
        if len(entries) != len(resp.kvs):
            log.warning(
                "expiry index: entries that do not parse ignored", ignored=len(resp.kvs) - len(entries)
            )
        return entries, int(resp.header.revision)

    async def watch_expiries(self, start_revision: int) -> AsyncIterator[int]:
        """Yields the etcd revision of each change of the expiry index from ``start_revision``
        on (read it again with :meth:`expiries`). :class:`StoreUnavailable` when etcd closes
        the stream or compacted ``start_revision`` away: the caller reads the index again."""
        start = self.keys.expiries
        stream = self.connection.watch.watch(
            start, range_end=prefix_range_end(start), start_revision=start_revision
        )
        try:
            with closed_channel_unavailable("watch expiry index"):
                async for resp in stream:
                    if resp.compact_revision > 0 or resp.canceled:
                        raise StoreUnavailable("expiry index watch compacted or canceled; read it again")
                    if resp.events:
                        yield int(resp.header.revision)
        except ETCD_ERRORS as e:
            raise translate(e, "watch expiry index") from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        raise StoreUnavailable("etcd closed the expiry index watch")

    async def index_expiry(self, override_revision: int, expires_at: float) -> None:
        """Put an entry (an override logged before the index existed; idempotent)."""
        try:
            await self.connection.kv.put(
                self.keys.expiry_key(override_revision), repr(expires_at), timeout=self.timeout
            )
        except ETCD_ERRORS as e:
            raise translate(e, "write expiry index") from e

    async def drop_expiry(self, override_revision: int) -> None:
        """Delete an entry (its override ended otherwise; idempotent)."""
        try:
            await self.connection.kv.delete(self.keys.expiry_key(override_revision), timeout=self.timeout)
        except ETCD_ERRORS as e:
            raise translate(e, "delete expiry index entry") from e

    async def set_leader_term(self, term: int) -> None:
        """Write the ``leader`` key directly: tests of the fencing compare without an election."""
        try:
            await self.connection.kv.put(self.keys.leader, str(term), timeout=self.timeout)
        except ETCD_ERRORS as e:
            raise translate(e, "write leader") from e


def _parse(blob: bytes, revision: int) -> pb.Event:
    msg = pb.Event()
    try:
        msg.ParseFromString(blob)
    except DecodeError as e:
        raise StoreError(f"log entry {revision} is not a valid event: {e}") from e
    if msg.revision != revision:
        raise StoreError(f"log entry {revision} claims revision {msg.revision}")
    return msg


__all__ = ["DEFAULT_PAGE", "EtcdEventStore"]
