"""The event store: the log in etcd. The ONLY module that imports etcd3aio.

Key layout under ``/lvs-events/<cluster>/``:

``log/<revision, 20 digits>``
    a serialized ``lvs_events.v1.Event`` with its ``revision`` field set; revisions are dense
    (1, 2, 3, ...) and assigned here.
``ids/<event_id>``
    the revision of that event (dedup index; trimmed together with its log entry).
``head``
    last appended revision (decimal).
``first``
    oldest revision still in the log (decimal; absent means 1).
``snapshot``
    the manifest of the newest snapshot, JSON ``{"format": 2, "revision": N, "table_digest": ...,
    "encoding": "zlib", "writer": <token>, "chunks": k, "bytes": ..., "state_bytes": ...,
    "sha256": ...}`` (format 1, still read: the state inline under ``"state"``).
``snapshots/<revision, 20 digits>/<writer>/<chunk, 6 digits>``
    the snapshot's state (canonical JSON of the folded State), zlib-compressed and cut into
    chunks of at most 512 KiB: a 10,000-server state is a few MB, over etcd's default request
    limit (1.5 MiB). Chunks are written first, then the manifest swaps in one compare-and-swap;
    a reader reads the manifest and its chunks at one etcd revision, so a concurrent writer never
    shows it half a snapshot; older chunk sets are deleted after the swap.
``leader``
    fencing seam for the leadership issue: an append may require its value to equal a term.

An append of a batch is ONE etcd transaction: compare ``head``'s value with the one read
(optimistic CAS, so any number of coordinators can append; by value, which is safe because
``head`` only grows and revisions are dense), compare every ``ids/<id>``'s create_revision with 0;
on success put every log key, every id key and ``head``. On failure the same transaction returns
(failure branch) the current ``head``, the ids that exist and the leader key, so a retry needs no
extra round trip. Duplicates get their ORIGINAL revision back.

Pipelining: while one append's transaction is in flight, the next may be sent at once, predicated
on the first one landing: it compares ``head`` with the first one's predicted end and the first
one's last ``ids/<id>`` with that revision. If the first fails, so does the second, which then
waits for the first to finish before it retries: batches land in the order they were submitted.

Reads pin an etcd revision ``R``: range-read ``log/`` from N at ``R`` (paginated), then watch the
prefix from ``R + 1``. Revisions are dense, so a gap or a repeat is detected by arithmetic: the
reader tracks the last revision it delivered, skips anything at or below it and re-reads on a gap,
on a watch cancellation (etcd compaction) and on any reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
import grpc.aio
import structlog
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio._protobuf import Compare, TxnRequest, TxnResponse  # no txn_compare_mod_revision helper there
from etcd3aio.connections import ConnectionManager
from etcd3aio.kv import KVService

from lvs_events.errors import Compacted, Fenced, StoreError, StoreUnavailable
from lvs_events.pb.v1 import events_pb2 as pb

log = structlog.get_logger(__name__)

REV_DIGITS = 20
DEFAULT_TIMEOUT = 5.0  # seconds, every etcd call
DEFAULT_PAGE = 256  # log entries per range read
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
MAX_BATCH_EVENTS = (MAX_TXN_OPS - 1) // 2  # success branch: 2 puts per event + head
MAX_APPEND_ATTEMPTS = 8  # etcd errors per append
TXN_UNAVAILABLE_RETRIES = 2  # within one attempt: etcd3aio's own default (3 attempts)
MAX_CAS_CONFLICTS = 500  # lost CAS races per append
MAX_REREADS = 64  # consecutive re-reads of a subscription without progress before giving up


def rev_key(revision: int) -> str:
    return f"{revision:0{REV_DIGITS}d}"


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an event landed: its log revision, and whether it was there already."""

    event_id: str
    revision: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Bounds:
    head: int  # last revision (0: empty log)
    first: int  # oldest revision kept (1 when nothing was trimmed)


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    revision: int
    state: bytes  # canonical JSON of lvs_events.domain.state.State
    table_digest: str

    def to_json(self) -> bytes:
        return (
            b'{"revision":%d,"state":' % self.revision
            + self.state
            + b',"table_digest":'
            + json.dumps(self.table_digest).encode()
            + b"}"
        )

    @classmethod
    def from_json(cls, blob: bytes) -> SnapshotRecord:
        data = json.loads(blob)
        state = json.dumps(data["state"], sort_keys=True, separators=(",", ":")).encode()
        return cls(int(data["revision"]), state, str(data["table_digest"]))


SNAPSHOT_CHUNK = 512 * 1024  # bytes per chunk key: well under etcd's default 1.5 MiB request
MAX_SNAPSHOT_STATE = 1 << 30  # refuse to inflate a manifest that claims more (corruption)


@dataclass(frozen=True, slots=True)
class _Manifest:
    """What the ``snapshot`` key holds (see the module docstring)."""

    revision: int
    table_digest: str
    writer: str = ""
    chunks: int = 0
    nbytes: int = 0
    state_bytes: int = 0
    sha256: str = ""
    inline: SnapshotRecord | None = None  # format 1: the whole snapshot in the key

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": 2,
                "revision": self.revision,
                "table_digest": self.table_digest,
                "encoding": "zlib",
                "writer": self.writer,
                "chunks": self.chunks,
                "bytes": self.nbytes,
                "state_bytes": self.state_bytes,
                "sha256": self.sha256,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> _Manifest:
        data = json.loads(blob)
        if "state" in data:  # format 1
            record = SnapshotRecord.from_json(blob)
            return cls(record.revision, record.table_digest, inline=record)
        if data.get("format") != 2 or data.get("encoding") != "zlib":
            raise ValueError(f"unknown snapshot format {data.get('format')!r}/{data.get('encoding')!r}")
        return cls(
            revision=int(data["revision"]),
            table_digest=str(data["table_digest"]),
            writer=str(data["writer"]),
            chunks=int(data["chunks"]),
            nbytes=int(data["bytes"]),
            state_bytes=int(data["state_bytes"]),
            sha256=str(data["sha256"]),
        )


def _pack_snapshot(state: bytes) -> tuple[bytes, str]:
    """Compress (CPU-bound: run it in a thread); the compressed bytes and their sha256."""
    packed = zlib.compress(state, 6)
    return packed, hashlib.sha256(packed).hexdigest()


def _unpack_snapshot(packed: bytes, manifest: _Manifest) -> bytes:
    if hashlib.sha256(packed).hexdigest() != manifest.sha256:
        raise ValueError("chunks do not match the manifest's sha256")
    if not 0 <= manifest.state_bytes <= MAX_SNAPSHOT_STATE:
        raise ValueError(f"state_bytes {manifest.state_bytes} out of range")
    inflate = zlib.decompressobj()
    state = inflate.decompress(packed, manifest.state_bytes + 1)
    if len(state) != manifest.state_bytes or not inflate.eof:
        raise ValueError(f"state is not {manifest.state_bytes} bytes once inflated")
    return state


@dataclass(frozen=True, slots=True)
class LogItem:
    """One event read from the log, with the newest head the reader knows of."""

    event: pb.Event
    head: int


class EventStore(Protocol):
    """What the coordinator needs from a durable, totally ordered log."""

    async def bounds(self) -> Bounds: ...

    async def append(self, events: Sequence[pb.Event], *, require_term: int | None = None) -> list[Appended]:
        """Append events (unique event_ids) atomically, in order; duplicates are not re-appended.

        ``require_term``: fencing seam; when set, the append only happens while the ``leader`` key
        holds that term (else :class:`Fenced`).
        """
        ...

    def read(self, from_revision: int, *, follow: bool, to_revision: int = 0) -> AsyncIterator[LogItem]:
        """Events from ``from_revision`` on (dense, in order, each once); raises Compacted."""
        ...

    async def get_snapshot(self) -> SnapshotRecord | None: ...

    async def snapshot_revision(self) -> int:
        """The newest snapshot's revision (0: none), without reading the snapshot itself."""
        ...

    async def put_snapshot(self, snapshot: SnapshotRecord) -> bool:
        """Store ``snapshot`` unless a newer (or equal) one is there; True when written."""
        ...

    async def trim(self, keep_from: int) -> int:
        """Delete events below ``keep_from`` (and their ids), advance ``first``; number deleted."""
        ...

    async def compact_history(self, keep_revisions: int) -> int | None:
        """Drop the store's own version history older than its newest ``keep_revisions``
        versions (etcd: compaction); the revision compacted to, or None when nothing was."""
        ...

    async def ping(self) -> None: ...


def _translate(e: BaseException, what: str) -> StoreError:
    if isinstance(e, TimeoutError):
        return StoreUnavailable(f"etcd {what}: no answer within the deadline")
    if isinstance(e, EtcdError):
        return StoreUnavailable(f"etcd {what}: {e}")
    if isinstance(e, grpc.aio.AioRpcError):
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailable(f"etcd {what}: {e.code().name} {e.details()}")
        return StoreError(f"etcd {what}: {e.code().name} {e.details()}")
    return StoreError(f"etcd {what}: {e!r}")


def _is_etcd_compacted(e: BaseException) -> bool:
    """etcd's own compaction: 'mvcc: required revision has been compacted' (OUT_OF_RANGE)."""
    return isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.OUT_OF_RANGE


class _EtcdCompacted(Exception):
    """Internal: the pinned etcd revision was compacted; start the read over."""


class EtcdEventStore:
    """:class:`EventStore` on etcd (see the module docstring for the key layout)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        cluster: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE,
        max_append_attempts: int = MAX_APPEND_ATTEMPTS,
        max_txn_ops: int = MAX_TXN_OPS,
    ) -> None:
        """``max_txn_ops``: etcd's ``--max-txn-ops`` (operations per transaction branch); a
        batch holds at most ``(max_txn_ops - 1) // 2`` events."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = list(endpoints)
        self.cluster = cluster
        self.timeout = timeout
        self.page_size = page_size
        self.max_append_attempts = max_append_attempts
        if max_txn_ops < 3:
            raise ValueError("max_txn_ops: at least 3")
        self.max_batch_events = (max_txn_ops - 1) // 2  # success branch: 2 puts per event + head
        self.prefix = f"/lvs-events/{cluster}/".encode()
        self.k_log = self.prefix + b"log/"
        self.k_ids = self.prefix + b"ids/"
        self.k_head = self.prefix + b"head"
        self.k_first = self.prefix + b"first"
        self.k_snapshot = self.prefix + b"snapshot"
        self.k_snapshots = self.prefix + b"snapshots/"
        self._snapshot_cache: SnapshotRecord | None = None  # the last one read or written
        self.k_leader = self.prefix + b"leader"
        self._client = Etcd3Client(self.endpoints, rpc_max_attempts=2)
        self._connected = False
        # the head revision as last seen: the CAS guess for the next append. A wrong guess costs
        # one failed transaction, which returns the right values.
        self._head_guess: int | None = None
        self._last_slot: _Slot | None = None  # the newest append call (pipelining)
        self._raw_txn: tuple[Any, Any] | None = None  # (channel, KV.Txn taking bytes)
        self._compacted = 0  # the etcd revision this store last compacted to (or saw compacted)

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        if not self._connected:
            await self._client.connect()
            self._connected = True

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._client.close()

    async def __aenter__(self) -> EtcdEventStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _kv(self) -> KVService:
        kv = self._client.kv
        if kv is None:
            raise StoreUnavailable("etcd client is not connected")
        return kv

    def log_key(self, revision: int) -> bytes:
        return self.k_log + rev_key(revision).encode()

    def id_key(self, event_id: str) -> bytes:
        return self.k_ids + event_id.encode()

    # --- reads ----------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            await self._kv.get(self.k_head, serializable=True, timeout=self.timeout)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "ping") from e

    async def bounds(self) -> Bounds:
        bounds, _ = await self._bounds_at()
        return bounds

    async def _bounds_at(self) -> tuple[Bounds, int]:
        """Head and first, and the etcd revision they were read at (one transaction)."""
        kv = self._kv
        try:
            resp = await kv.txn(
                [], [kv.txn_op_get(self.k_head), kv.txn_op_get(self.k_first)], timeout=self.timeout
            )
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "read head") from e
        head_kvs = resp.responses[0].response_range.kvs
        first_kvs = resp.responses[1].response_range.kvs
        head = int(head_kvs[0].value) if head_kvs else 0
        first = int(first_kvs[0].value) if first_kvs else 1
        return Bounds(head, first), int(resp.header.revision)

    async def get_snapshot(self) -> SnapshotRecord | None:
        """The newest snapshot. Its chunks are read only when it is not the one last seen."""
        for attempt in range(3):
            manifest, _, at = await self._get_manifest()
            if manifest is None:
                return None
            if manifest.inline is not None:
                return manifest.inline
            cached = self._snapshot_cache
            if cached is not None and cached.revision == manifest.revision:
                return cached
            try:
                packed = await self._read_chunks(manifest, at)
            except _EtcdCompacted:
                if attempt == 2:
                    raise StoreUnavailable("snapshot: etcd compacted it away under three reads") from None
                continue
            try:
                state = await asyncio.to_thread(_unpack_snapshot, packed, manifest)
            except (ValueError, zlib.error) as e:
                raise StoreError(f"snapshot at revision {manifest.revision} is not readable: {e}") from e
            record = SnapshotRecord(manifest.revision, state, manifest.table_digest)
            self._snapshot_cache = record
            return record
        raise AssertionError("unreachable")

    async def snapshot_revision(self) -> int:
        manifest, _, _ = await self._get_manifest()
        return manifest.revision if manifest is not None else 0

    async def _get_manifest(self) -> tuple[_Manifest | None, int, int]:
        """The manifest, its key's mod_revision (0: absent) and the etcd revision read at."""
        try:
            resp = await self._kv.get(self.k_snapshot, timeout=self.timeout)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "read snapshot") from e
        at = int(resp.header.revision)
        if not resp.kvs:
            return None, 0, at
        kv = resp.kvs[0]
        try:
            return _Manifest.from_json(kv.value), int(kv.mod_revision), at
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"snapshot manifest in etcd is not readable: {e}") from e

    def _chunk_prefix(self, revision: int, writer: str) -> bytes:
        return self.k_snapshots + f"{rev_key(revision)}/{writer}/".encode()

    async def _read_chunks(self, manifest: _Manifest, at: int) -> bytes:
        """The manifest's chunks as they were at etcd revision ``at`` (a few per read: the
        client receives at most 4 MiB per message)."""
        prefix = self._chunk_prefix(manifest.revision, manifest.writer)
        end = prefix_range_end(prefix)
        start = prefix
        parts: list[bytes] = []
        while True:
            try:
                resp = await self._kv.get(start, range_end=end, revision=at, limit=4, timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                if _is_etcd_compacted(e):
                    raise _EtcdCompacted from e
                raise _translate(e, "read snapshot chunks") from e
            except (EtcdError, TimeoutError) as e:
                raise _translate(e, "read snapshot chunks") from e
            parts.extend(bytes(kv.value) for kv in resp.kvs)
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
        end = self.log_key(stop)
        try:
            resp = await self._kv.get(
                self.log_key(start), range_end=end, revision=at, limit=self.page_size, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as e:
            if _is_etcd_compacted(e):
                raise _EtcdCompacted from e
            raise _translate(e, "read log") from e
        except (EtcdError, TimeoutError) as e:
            raise _translate(e, "read log") from e
        n = len(self.k_log)
        return [(int(kv.key[n:]), kv.value) for kv in resp.kvs]

    async def read(self, from_revision: int, *, follow: bool, to_revision: int = 0) -> AsyncIterator[LogItem]:
        """Events with revision >= ``from_revision`` (and <= ``to_revision`` when not 0).

        Without ``follow`` the read ends at the head as of its start (or ``to_revision``).
        With ``follow`` it catches up, then watches; a reconnect, a gap or an etcd compaction
        makes it re-read from the last delivered revision, so nothing is lost or repeated.
        Raises :class:`Compacted` when ``from_revision`` (or, while following, the next revision
        wanted) is below the oldest kept revision.
        """
        nxt = max(from_revision, 1)
        rereads = 0
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
            except StoreUnavailable as e:
                if not follow:
                    raise
                log.warning("etcd unavailable while following; retrying", next_revision=nxt, error=str(e))
            else:
                return
            rereads = 0 if nxt > progress_from else rereads + 1
            if rereads > MAX_REREADS:
                raise StoreUnavailable(f"log read stuck at revision {nxt} after {rereads} attempts")
            await asyncio.sleep(min(0.05 * 2 ** min(rereads, 6), 2.0) * (0.5 + random.random() / 2))

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
        open-ended pages made a full read quadratic in the length of the log (11 ms a page of
        256 at 100,000 events, 27,000 events/s; bounded pages are read at the speed of the
        events themselves).
        """
        end = min(stop, head + 1) if stop else head + 1
        while nxt < end:
            page_stop = min(nxt + self.page_size, end)
            entries = await self._range_page(nxt, page_stop, at)
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
        watch = self._client.watch
        if watch is None:
            raise StoreUnavailable("etcd client is not connected")
        n = len(self.k_log)
        stream = watch.watch(
            self.k_log, range_end=prefix_range_end(self.k_log), start_revision=start_revision
        )
        try:
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
        except (EtcdError, grpc.aio.AioRpcError) as e:
            raise _translate(e, "watch log") from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        raise StoreUnavailable("etcd closed the watch stream")

    async def _first(self) -> tuple[int, int]:
        bounds, at = await self._bounds_at()
        return at, bounds.first

    # --- append ---------------------------------------------------------------------------

    async def append(self, events: Sequence[pb.Event], *, require_term: int | None = None) -> list[Appended]:
        """See :meth:`EventStore.append`. Concurrent calls are pipelined: a call made while an
        earlier one is in flight sends its transaction at once, predicated on the earlier one
        succeeding (see :class:`_Slot`); batches land in the order the calls were made."""
        if not events:
            return []
        if len(events) > 1 and len({e.event_id for e in events}) != len(events):
            raise ValueError("append: event_ids in one batch must be unique (dedupe first)")
        if len(events) > self.max_batch_events:
            raise ValueError(f"append: at most {self.max_batch_events} events per transaction")
        prev, slot = self._last_slot, _Slot(asyncio.get_running_loop().create_future())
        self._last_slot = slot
        try:
            return await self._append_chained(list(events), require_term, prev, slot)
        finally:
            slot.predicted = None
            slot.done.set_result(None)
            if self._last_slot is slot:
                self._last_slot = None

    async def _append_chained(  # noqa: PLR0912, PLR0915 -- one CAS loop, its exits together
        self, events: list[pb.Event], require_term: int | None, prev: _Slot | None, slot: _Slot
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
        errors = conflicts = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4 * self.timeout
        after = prev.predicted if prev is not None and not prev.done.done() else None
        guess: int | None
        if after is not None:
            guess = after[1]
        else:
            if prev is not None:
                await prev.done
            guess = self._head_guess
        while True:
            try:
                if guess is None:
                    guess = await self._read_head()
                request, assigned = self._append_txn(pending, guess, after, require_term)
                slot.predicted = (pending[-1].event_id, assigned[-1].revision)
                resp = await self._txn(request)
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError, StoreUnavailable) as e:
                # Ambiguous: the transaction may have been applied. The next attempt finds out
                # (its id compares fail and return the revisions), so nothing is appended twice.
                slot.predicted = None
                for ev in pending:
                    ev.revision = 0
                self._head_guess = guess = None
                errors += 1
                if errors >= self.max_append_attempts:
                    if isinstance(e, StoreUnavailable):
                        raise
                    raise _translate(e, "append") from e
                log.warning("append failed; retrying", attempt=errors, error=str(e))
                if after is not None and prev is not None:
                    await prev.done
                after = None
                await asyncio.sleep(_backoff(errors - 1))
                continue
            if resp.succeeded:
                last = assigned[-1].revision
                if self._head_guess is None or last > self._head_guess:
                    self._head_guess = last
                results.update((a.event_id, a) for a in assigned)
                return [results[ev.event_id] for ev in events]
            slot.predicted = None
            if after is not None:
                # chained behind `prev`: it may have failed; let it finish (and retry) first
                assert prev is not None
                await prev.done
                after = None
            guess, pending = self._after_failure(resp, pending, results, require_term)
            if self._head_guess is not None and self._head_guess > guess:
                guess = self._head_guess  # `prev` landed after our transaction was evaluated
            self._head_guess = guess
            if not pending:
                return [results[ev.event_id] for ev in events]
            conflicts += 1
            if conflicts >= MAX_CAS_CONFLICTS or loop.time() > deadline:
                raise StoreUnavailable(f"append: head kept moving; gave up after {conflicts} lost races")
            if conflicts % 4 == 0:  # break a lockstep with another appender
                await asyncio.sleep(random.random() * 0.002)

    def _append_txn(
        self, pending: list[pb.Event], head: int, after: tuple[str, int] | None, require_term: int | None
    ) -> tuple[bytes, list[Appended]]:
        """The append transaction, as an encoded ``TxnRequest``, and where each event would land.

        ``head`` by value: it only grows and revisions are dense, so ``head == N`` means nobody
        has written ``log/N+1`` yet. ``after``: (event id, revision) that must already be in the
        log (the last event of the batch this one is chained behind).

        The request is encoded directly in the protobuf wire format and sent as it is (see
        :meth:`_txn`): building it from a few hundred etcd3aio op objects cost more than the rest
        of the append path.
        ``tests/coordinator/test_coord_txn.py`` checks it equals the one etcd3aio would build.
        """
        id_keys = [self.k_ids + ev.event_id.encode() for ev in pending]
        compare = [_compare_absent(k) for k in id_keys]
        if head:
            compare.append(_compare_value(self.k_head, str(head).encode()))
        else:
            compare.append(_compare_absent(self.k_head))
        if after is not None:
            key = self.k_ids + after[0].encode()
            compare.append(_compare_value(key, str(after[1]).encode()))
        failure = [_get_op(self.k_head)]
        failure.extend(_get_op(k) for k in id_keys)
        if require_term is not None:
            compare.append(_compare_value(self.k_leader, str(require_term).encode()))
            failure.append(_get_op(self.k_leader))
        success = []
        assigned: list[Appended] = []
        rev = head
        k_log = self.k_log
        for ev, id_key in zip(pending, id_keys, strict=True):
            rev += 1
            ev.revision = rev
            srev = str(rev).encode()
            key = k_log + (b"0" * (REV_DIGITS - len(srev))) + srev
            success.append(_put_op(key, ev.SerializeToString(deterministic=True)))
            success.append(_put_op(id_key, srev))
            assigned.append(Appended(ev.event_id, rev, duplicate=False))
        success.append(_put_op(self.k_head, str(rev).encode()))
        return b"".join(compare) + b"".join(success) + b"".join(failure), assigned

    def _after_failure(
        self,
        resp: Any,
        pending: list[pb.Event],
        results: dict[str, Appended],
        require_term: int | None,
    ) -> tuple[int, list[pb.Event]]:
        """Read the failure branch ([head, ids..., leader?]): the new head guess, what is left."""
        rs = resp.responses
        head_kvs = rs[0].response_range.kvs
        guess = int(head_kvs[0].value) if head_kvs else 0
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

    async def _txn(self, request: bytes) -> Any:
        """Send an encoded ``TxnRequest``; the ``TxnResponse``.

        etcd3aio's public ``txn`` copies every op into a new request (about as costly as building
        it), so the bytes go out as they are, on etcd3aio's channel, with the deadline on the
        call. Of etcd3aio's retry wrapper only its retry of a refused connection is kept (below);
        the append loop retries the rest, and finds out through the ids whether an ambiguous
        attempt landed. etcd3aio is pinned; its public path stays as the fallback (and serves
        auth, whose token it adds)."""
        call = self._raw_txn_call()
        if call is None:
            kv, req = self._kv, TxnRequest.FromString(request)
            return await kv.txn(req.compare, req.success, req.failure, timeout=self.timeout)
        for attempt in range(TXN_UNAVAILABLE_RETRIES + 1):
            try:
                return await call(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                # as etcd3aio would: a refused connection (a member going away) is tried twice
                # more, 50 and 100 ms apart, on the channel's next member
                if attempt == TXN_UNAVAILABLE_RETRIES or e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _raw_txn_call(self) -> Any:
        """``KV.Txn`` on etcd3aio's channel taking the request already encoded (None: not
        available, or auth is on)."""
        channel = getattr(self._client, "_channel", None)
        if channel is None or getattr(self._kv, "_metadata", None):
            return None
        if self._raw_txn is None or self._raw_txn[0] is not channel:  # made per channel (reconnects)
            call = channel.unary_unary(
                "/etcdserverpb.KV/Txn", request_serializer=None, response_deserializer=TxnResponse.FromString
            )
            self._raw_txn = (channel, call)
        return self._raw_txn[1]

    async def _read_head(self) -> int:
        try:
            resp = await self._kv.get(self.k_head, timeout=self.timeout)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "read head") from e
        return int(resp.kvs[0].value) if resp.kvs else 0

    # --- snapshots and retention ----------------------------------------------------------

    async def put_snapshot(self, snapshot: SnapshotRecord) -> bool:
        """Chunks first, then the manifest by compare-and-swap, then older chunk sets go.

        A writer that loses the swap (another coordinator wrote a newer snapshot meanwhile)
        deletes its own chunks; a crash between the steps leaves chunks that the next
        successful snapshot deletes (everything below its own revision)."""
        manifest, mod, _ = await self._get_manifest()
        if manifest is not None and manifest.revision >= snapshot.revision:
            return False
        packed, digest = await asyncio.to_thread(_pack_snapshot, snapshot.state)
        writer = uuid.uuid4().hex[:12]
        prefix = self._chunk_prefix(snapshot.revision, writer)
        chunks = [packed[i : i + SNAPSHOT_CHUNK] for i in range(0, len(packed), SNAPSHOT_CHUNK)]
        new = _Manifest(
            revision=snapshot.revision,
            table_digest=snapshot.table_digest,
            writer=writer,
            chunks=len(chunks),
            nbytes=len(packed),
            state_bytes=len(snapshot.state),
            sha256=digest,
        )
        kv = self._kv
        swapped = False
        try:
            for i, chunk in enumerate(chunks):
                await kv.put(prefix + f"{i:06d}".encode(), chunk, timeout=self.timeout)
            for _ in range(3):
                resp = await kv.txn(
                    [_compare_mod(self.k_snapshot, mod)],
                    [kv.txn_op_put(self.k_snapshot, new.to_json())],
                    timeout=self.timeout,
                )
                if resp.succeeded:
                    swapped = True
                    break
                manifest, mod, _ = await self._get_manifest()
                if manifest is not None and manifest.revision >= snapshot.revision:
                    break
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "write snapshot") from e
        finally:
            if not swapped:
                with contextlib.suppress(EtcdError, grpc.aio.AioRpcError, TimeoutError, StoreUnavailable):
                    await kv.delete(prefix, range_end=prefix_range_end(prefix), timeout=self.timeout)
        if not swapped:
            return False
        self._snapshot_cache = snapshot
        try:  # everything older than this snapshot's chunks (a failure here only leaves garbage)
            await kv.delete(self.k_snapshots, range_end=prefix, timeout=self.timeout)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            log.warning("old snapshot chunks not deleted; the next snapshot retries", error=str(e))
        return True

    async def trim(self, keep_from: int) -> int:
        """Advance ``first`` to ``keep_from`` (never backwards), then delete what lies below it.

        Crash-safe and idempotent: ``first`` moves first (readers stop asking for older events),
        then each page of old entries goes together with its ids in one transaction; a later
        trim finishes what an interrupted one left.
        """
        kv = self._kv
        bounds, _ = await self._bounds_at()
        target = min(keep_from, bounds.head + 1)
        if target > bounds.first:
            try:
                await kv.txn(
                    [kv.txn_compare_value(self.k_first, str(bounds.first))]
                    if bounds.first > 1
                    else [kv.txn_compare_create_revision(self.k_first, 0)],
                    [kv.txn_op_put(self.k_first, str(target))],
                    timeout=self.timeout,
                )
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
                raise _translate(e, "advance first") from e
        bounds, _ = await self._bounds_at()
        first = bounds.first
        deleted = 0
        page = MAX_BATCH_EVENTS
        n = len(self.k_log)
        lo: int | None = None
        while True:
            # Pages are exact key ranges [lo, lo + page): etcd counts every key of a range to
            # answer it, so "everything below first, limit N" made a big trim quadratic.
            try:
                if lo is None:  # the oldest entry left (once, and once more at the end)
                    resp = await kv.get(
                        self.k_log,
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
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
                raise _translate(e, "read old log") from e
            lo = hi if hi < first else None
            if not resp.kvs:
                continue
            ops = []
            for item in resp.kvs:
                msg = pb.Event()
                with contextlib.suppress(Exception):
                    msg.ParseFromString(item.value)
                if msg.event_id:
                    ops.append(kv.txn_op_delete(self.id_key(msg.event_id)))
                ops.append(kv.txn_op_delete(item.key))
            try:
                await kv.txn([], ops, timeout=self.timeout)
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
                raise _translate(e, "trim log") from e
            deleted += len(resp.kvs)

    async def compact_history(self, keep_revisions: int) -> int | None:
        """Compact etcd's MVCC history to ``keep_revisions`` etcd revisions behind the current one.

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
            await self._kv.compact(target, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if not _is_etcd_compacted(e):
                raise _translate(e, "compact history") from e
            self._compacted = target  # compacted past it already
            return None
        except (EtcdError, TimeoutError) as e:
            raise _translate(e, "compact history") from e
        self._compacted = target
        return target

    # --- fencing seam ---------------------------------------------------------------------

    async def set_leader_term(self, term: int) -> None:
        """Write the ``leader`` key (for tests of the fencing seam; elections come later)."""
        try:
            await self._kv.put(self.k_leader, str(term), timeout=self.timeout)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "write leader") from e

    async def raw(self) -> Etcd3Client:
        """The underlying client, for tests and the benchmark's raw-etcd baseline only."""
        await self.connect()
        return self._client


@dataclass(slots=True)
class _Slot:
    """One append call, for the call made after it: ``predicted`` is (id of the last event,
    revision) its transaction in flight would give; None when none is in flight. ``done``
    resolves when the call has finished (succeeded or given up)."""

    done: asyncio.Future[None]
    predicted: tuple[str, int] | None = None


class _Gap(Exception):
    def __init__(self, seen: int) -> None:
        super().__init__(f"watch delivered revision {seen} ahead of the next expected")
        self.seen = seen


def _parse(blob: bytes, revision: int) -> pb.Event:
    msg = pb.Event()
    try:
        msg.ParseFromString(blob)
    except Exception as e:
        raise StoreError(f"log entry {revision} is not a valid event: {e}") from e
    if msg.revision != revision:
        raise StoreError(f"log entry {revision} claims revision {msg.revision}")
    return msg


def _compare_mod(key: bytes, mod_revision: int) -> Any:
    """Compare: the key's mod_revision equals ``mod_revision`` (0: the key does not exist)."""
    return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=mod_revision)


# --- the append transaction in the protobuf wire format (etcdserverpb.TxnRequest) -------------
# TxnRequest: compare = 1, success = 2, failure = 3. Compare: target = 2 (CREATE 1, VALUE 3),
# key = 3, create_revision = 5 and value = 7 (a oneof: a 0 is encoded); result EQUAL is 0.
# RequestOp: request_range = 1, request_put = 2. PutRequest / RangeRequest: key = 1, value = 2.


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(n) for n in range(1 << 14)]  # every length up to 16 KiB, ready made


def _len(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint(n)


def _compare_absent(key: bytes) -> bytes:
    """TxnRequest.compare: ``key``'s create_revision is 0 (the key does not exist)."""
    inner = b"\x10\x01\x1a" + _len(len(key)) + key + b"\x28\x00"
    return b"\x0a" + _len(len(inner)) + inner


def _compare_value(key: bytes, value: bytes) -> bytes:
    """TxnRequest.compare: ``key``'s value equals ``value``."""
    inner = b"\x10\x03\x1a" + _len(len(key)) + key + b"\x3a" + _len(len(value)) + value
    return b"\x0a" + _len(len(inner)) + inner


def _put_op(key: bytes, value: bytes) -> bytes:
    """TxnRequest.success: RequestOp.request_put (PutRequest key, value)."""
    put = b"\x0a" + _len(len(key)) + key + b"\x12" + _len(len(value)) + value
    op = b"\x12" + _len(len(put)) + put
    return b"\x12" + _len(len(op)) + op


def _get_op(key: bytes) -> bytes:
    """TxnRequest.failure: RequestOp.request_range (RangeRequest key)."""
    rng = b"\x0a" + _len(len(key)) + key
    op = b"\x0a" + _len(len(rng)) + rng
    return b"\x1a" + _len(len(op)) + op


def _backoff(attempt: int) -> float:
    base: float = min(0.02 * 2**attempt, 1.0)
    return base * (0.5 + random.random() / 2)


def describe(e: Any) -> str:
    return f"{type(e).__name__}: {e}"


# --- leadership (election of the active director) ---------------------------------------------
#
# Keys under ``/lvs-events/<cluster>/`` (next to the log):
#
# ``leader``       the leader's term, decimal, bound to its lease. The append path's fencing compare
#                  (``require_term``) reads this key, so a stale term is refused in the same txn.
# ``leader_info``  JSON :class:`LeaderRecord` (node, term, lease, Peer address), same lease.
# ``term``         the counter of terms given (never bound to a lease, never decreases).
# ``last_leader``  JSON of the last leader, with ``"ended": true`` once its LOST event is logged;
#                  a campaign after a lease expiry logs the LOST event the expiry could not.
#
# Every change of leader is ONE transaction: compare the leader key (absent for a campaign, or
# holding the stale term for a takeover), the term counter and the log head; put the leader keys
# with the new lease, the counter, and the Leadership events (log entries, ids, head).


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    node: str
    term: int
    lease_id: int
    address: str = ""
    revision: int = 0  # log revision of its Leadership ACQUIRED event
    ended: bool = False  # last_leader only: its LOST event is in the log

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "node": self.node,
                "term": self.term,
                "lease_id": self.lease_id,
                "address": self.address,
                "revision": self.revision,
                "ended": self.ended,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> LeaderRecord:
        try:
            d = json.loads(blob)
            return cls(
                str(d["node"]),
                int(d["term"]),
                int(d["lease_id"]),
                str(d.get("address", "")),
                int(d.get("revision", 0)),
                bool(d.get("ended", False)),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"leader record in etcd is not readable: {e}") from e


@dataclass(frozen=True, slots=True)
class ElectionOutcome:
    acquired: bool  # for resign: resigned
    leader: LeaderRecord | None  # the leader after the call
    term: int  # the term counter after the call


@dataclass(frozen=True, slots=True)
class KeepAliveOutcome:
    held: bool
    ttl: int
    leader: LeaderRecord | None
    term: int


# (new term, the previous leader whose LOST event is not logged yet) -> events to append
LeaderEvents = Callable[[int, LeaderRecord | None], list[pb.Event]]

MAX_ELECTION_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class _LeaderView:
    leader_value: bytes | None
    info: LeaderRecord | None
    term: int
    term_mod: int
    head: int
    last: LeaderRecord | None
    revision: int  # etcd revision read at


class EtcdLeaderStore:
    """The leader election in etcd, next to (and in the same transactions as) the log of
    ``events`` (an :class:`EtcdEventStore`, whose connection it shares)."""

    def __init__(self, events: EtcdEventStore) -> None:
        self.events = events
        self.timeout = events.timeout
        p = events.prefix
        self.k_leader = events.k_leader
        self.k_info = p + b"leader_info"
        self.k_term = p + b"term"
        self.k_last = p + b"last_leader"
        # Its own etcd connection: pick_first over the endpoints (put the local member first), and
        # HTTP/2 keepalive in about a second, so a partitioned member is left within the election
        # deadlines (the log's client round-robins, with keepalives of 10 s + 5 s).
        manager = ConnectionManager(events.endpoints, keepalive_time_ms=1000, keepalive_timeout_ms=500)
        manager.grpc_options = [
            ("grpc.lb_policy_name", "pick_first") if k == "grpc.lb_policy_name" else (k, v)
            for k, v in manager.grpc_options
        ] + [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        self._client = Etcd3Client(events.endpoints, rpc_max_attempts=1)
        self._client._manager = manager
        self._connected = False
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        if self._connected:
            return
        async with self._connecting:
            if not self._connected:
                await self._client.connect()
                self._connected = True

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            await self._client.close()

    @property
    def _kv(self) -> KVService:
        kv = self._client.kv
        if kv is None:
            raise StoreUnavailable("etcd client (leadership) is not connected")
        return kv

    def _lease(self) -> Any:
        lease = self._client.lease
        if lease is None:
            raise StoreUnavailable("etcd client is not connected")
        return lease

    async def grant(self, ttl: int, *, within: float | None = None) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds; etcd may raise it to its minimum)."""
        await self.connect()
        try:
            resp = await self._lease().grant(ttl, timeout=within or self.timeout, max_attempts=1)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "lease grant") from e
        return int(resp.ID), int(resp.TTL)

    async def revoke(self, lease_id: int, *, within: float | None = None) -> None:
        """Revoke a lease (its keys go with it); an unknown or expired lease is not an error."""
        await self.connect()
        try:
            await self._lease().revoke(lease_id, timeout=within or self.timeout, max_attempts=1)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise _translate(e, "lease revoke") from e
        except EtcdError as e:
            if "not found" in str(e).lower():
                return
            raise _translate(e, "lease revoke") from e
        except TimeoutError as e:
            raise _translate(e, "lease revoke") from e

    async def _view(self, within: float) -> _LeaderView:
        await self.connect()
        kv = self._kv
        ops = [
            kv.txn_op_get(k)
            for k in (self.k_leader, self.k_info, self.k_term, self.events.k_head, self.k_last)
        ]
        try:
            resp = await kv.txn([], ops, timeout=within)
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "read leader") from e
        return self._parse_view(resp.responses, int(resp.header.revision))

    @staticmethod
    def _parse_view(rs: Any, revision: int) -> _LeaderView:
        leader_kvs, info_kvs, term_kvs, head_kvs, last_kvs = (r.response_range.kvs for r in rs[:5])
        return _LeaderView(
            leader_value=bytes(leader_kvs[0].value) if leader_kvs else None,
            info=LeaderRecord.from_json(info_kvs[0].value) if info_kvs else None,
            term=int(term_kvs[0].value) if term_kvs else 0,
            term_mod=int(term_kvs[0].mod_revision) if term_kvs else 0,
            head=int(head_kvs[0].value) if head_kvs else 0,
            last=LeaderRecord.from_json(last_kvs[0].value) if last_kvs else None,
            revision=revision,
        )

    async def current(self, *, within: float | None = None) -> tuple[LeaderRecord | None, int, int]:
        """(leader or None, term counter, etcd revision): one linearizable read."""
        await self.connect()
        v = await self._view(within or self.timeout)
        return (v.info if v.leader_value is not None else None), v.term, v.revision

    def _log_ops(self, events: list[pb.Event], head: int) -> tuple[list[Any], int]:
        kv = self._kv
        ops = []
        rev = head
        for ev in events:
            rev += 1
            ev.revision = rev
            ops.append(kv.txn_op_put(self.events.log_key(rev), ev.SerializeToString(deterministic=True)))
            ops.append(kv.txn_op_put(self.events.id_key(ev.event_id), str(rev)))
        ops.append(kv.txn_op_put(self.events.k_head, str(rev)))
        return ops, rev

    def _head_compare(self, head: int) -> Any:
        kv = self._kv
        if head:
            return kv.txn_compare_value(self.events.k_head, str(head))
        return kv.txn_compare_create_revision(self.events.k_head, 0)

    def _failure_ops(self) -> list[Any]:
        kv = self._kv
        return [
            kv.txn_op_get(k)
            for k in (self.k_leader, self.k_info, self.k_term, self.events.k_head, self.k_last)
        ]

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
        await self.connect()
        kv = self._kv
        deadline = asyncio.get_running_loop().time() + (within or self.timeout)
        view: _LeaderView | None = None
        for attempt in range(MAX_ELECTION_ATTEMPTS):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                if view is None:
                    view = await self._view(left)
                    if view.info is not None and view.info.lease_id == lease_id and view.leader_value:
                        return ElectionOutcome(True, view.info, view.term)  # an earlier try landed
                    if not self._may_take(view, expect_term):
                        return ElectionOutcome(False, view.info if view.leader_value else None, view.term)
                new_term = view.term + 1
                prev = view.last if view.last is not None and not view.last.ended else None
                events = events_for(new_term, prev)
                log_ops, last_rev = self._log_ops(events, view.head)
                record = LeaderRecord(node, new_term, lease_id, address, last_rev)
                compare = [
                    kv.txn_compare_create_revision(self.k_leader, 0)
                    if expect_term is None
                    else kv.txn_compare_value(self.k_leader, str(expect_term)),
                    _compare_mod(self.k_term, view.term_mod),
                    self._head_compare(view.head),
                ]
                success = [
                    kv.txn_op_put(self.k_leader, str(new_term), lease=lease_id),
                    kv.txn_op_put(self.k_info, record.to_json(), lease=lease_id),
                    kv.txn_op_put(self.k_term, str(new_term)),
                    kv.txn_op_put(self.k_last, record.to_json()),
                    *log_ops,
                ]
                resp = await kv.txn(compare, success, self._failure_ops(), timeout=max(0.05, left))
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
                # ambiguous: re-read; our lease on the leader key tells whether it landed
                view = None
                if attempt >= 2 or deadline - asyncio.get_running_loop().time() <= 0:
                    raise _translate(e, "election") from e
                await asyncio.sleep(_backoff(attempt))
                continue
            if resp.succeeded:
                return ElectionOutcome(True, record, new_term)
            view = self._parse_view(resp.responses, int(resp.header.revision))
            if not self._may_take(view, expect_term):
                return ElectionOutcome(False, view.info if view.leader_value else None, view.term)
            # the term counter or the log head moved: try again with the fresh values
        raise StoreUnavailable("election: no decision within the deadline")

    @staticmethod
    def _may_take(view: _LeaderView, expect_term: int | None) -> bool:
        if expect_term is None:
            return view.leader_value is None
        return view.leader_value == str(expect_term).encode()

    async def keepalive(self, lease_id: int, term: int, *, within: float | None = None) -> KeepAliveOutcome:
        """Refresh the lease and read (linearizably) whether the leader key still holds ``term``
        with this lease; both at once."""
        await self.connect()
        t = within or self.timeout
        lease = self._lease()

        async def refresh() -> int:
            call = lease.keep_alive(lease_id)
            try:
                resp = await call.read()
            finally:
                call.cancel()
            return int(getattr(resp, "TTL", 0))

        try:
            async with asyncio.timeout(t):
                ttl, view = await asyncio.gather(refresh(), self._view(t))
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
            raise _translate(e, "keepalive") from e
        info = view.info if view.leader_value is not None else None
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
        await self.connect()
        kv = self._kv
        deadline = asyncio.get_running_loop().time() + (within or self.timeout)
        view: _LeaderView | None = None
        for attempt in range(MAX_ELECTION_ATTEMPTS):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                if view is None:
                    view = await self._view(left)
                if view.leader_value != str(term).encode() or view.info is None:
                    return ElectionOutcome(False, view.info if view.leader_value else None, view.term)
                info = view.info
                log_ops, _ = self._log_ops(events_for(view.term, info), view.head)
                compare = [kv.txn_compare_value(self.k_leader, str(term)), self._head_compare(view.head)]
                success = [
                    kv.txn_op_delete(self.k_leader),
                    kv.txn_op_delete(self.k_info),
                    kv.txn_op_put(self.k_last, LeaderRecord(**{**_fields(info), "ended": True}).to_json()),
                    *log_ops,
                ]
                resp = await kv.txn(compare, success, self._failure_ops(), timeout=max(0.05, left))
            except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as e:
                view = None
                if attempt >= 2:
                    raise _translate(e, "resign") from e
                await asyncio.sleep(_backoff(attempt))
                continue
            if resp.succeeded:
                with contextlib.suppress(StoreError):
                    await self.revoke(
                        info.lease_id, within=max(0.05, deadline - asyncio.get_running_loop().time())
                    )
                return ElectionOutcome(True, None, view.term)
            view = self._parse_view(resp.responses, int(resp.header.revision))
        raise StoreUnavailable("resign: no decision within the deadline")

    async def watch(self, start_revision: int) -> AsyncIterator[tuple[LeaderRecord | None, int]]:
        """Changes of the leader from etcd revision ``start_revision``: (leader or None, etcd
        revision). Ends (StoreUnavailable) when the watch breaks; re-read and watch again."""
        await self.connect()
        watch = self._client.watch
        if watch is None:
            raise StoreUnavailable("etcd client is not connected")
        stream = watch.watch(self.k_info, start_revision=start_revision)
        try:
            async for resp in stream:
                if resp.compact_revision > 0 or resp.canceled:
                    raise StoreUnavailable("leader watch cancelled (compaction)")
                for ev in resp.events:
                    rev = int(ev.kv.mod_revision) or int(resp.header.revision)
                    if ev.type == 0:
                        yield LeaderRecord.from_json(ev.kv.value), rev
                    else:
                        yield None, int(resp.header.revision)
        except (EtcdError, grpc.aio.AioRpcError) as e:
            raise _translate(e, "watch leader") from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        raise StoreUnavailable("etcd closed the leader watch")


def _fields(record: LeaderRecord) -> dict[str, Any]:
    return {
        "node": record.node,
        "term": record.term,
        "lease_id": record.lease_id,
        "address": record.address,
        "revision": record.revision,
    }
