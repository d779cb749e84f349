"""Folded state at a revision, snapshots every K events or T seconds, and retention.

A snapshot is the folded :class:`~lvs_events.domain.state.State` at some revision S (canonical
JSON) with the digest of its rendered table. Any coordinator may write one; the store's CAS keeps
a newer snapshot from being replaced by an older one. Retention keeps at least ``retention``
events behind the newest snapshot and trims the rest (``first`` advances), so a reader always
finds either its revision in the log or a snapshot it can continue from.

The hash chain: every fold checks the links of the events it reads
(:mod:`lvs_events.domain.chain`), and a snapshot carries the chain's head at its revision. A
break is logged as an error and no snapshot is written at or past it: a snapshot over an edited
entry would hide the edit from every later check that starts at the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import structlog

from lvs_events import wire
from lvs_events.coordinator.stores import Bounds, EventStore, SnapshotRecord
from lvs_events.domain import codec
from lvs_events.domain.chain import ChainBreak, ChainFollower
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold_all
from lvs_events.domain.table import Table
from lvs_events.errors import Compacted, LvsEventsError, StoreError
from lvs_events.pb.v1 import events_pb2 as pb

log = structlog.get_logger(__name__)

DEFAULT_SNAPSHOT_EVERY = 1000
DEFAULT_SNAPSHOT_INTERVAL = 60.0
DEFAULT_ETCD_HISTORY = 10_000  # etcd revisions of history kept by the compaction after a snapshot
DEFAULT_RETENTION = 100_000
_FOLD_PAGE = 512  # events folded per hand-off to the folding thread


class RevisionAhead(LvsEventsError):
    """A revision past the head of the log was asked for."""


class ChainBrokenError(StoreError):
    """The log's hash chain does not hold: no snapshot is written past the break."""


@dataclass(frozen=True, slots=True)
class Folded:
    state: State
    table: Table
    bounds: Bounds
    chain_head: bytes = b""  # the hash of the event at `revision` (b"": none, or not known)

    @property
    def revision(self) -> int:
        return self.state.revision

    def state_json(self) -> bytes:
        return codec.dumps(self.state)

    def table_json(self) -> bytes:
        return json.dumps(self.table.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _fold_page(state: State, page: list[pb.Event], chain: ChainFollower) -> State:
    """Check the links of a page of log entries, convert and fold them (run in a thread)."""
    for msg in page:
        chain.step(wire.chain_link(msg))
    return fold_all(state, [wire.event_from_pb(msg) for msg in page])


@dataclass(frozen=True, slots=True)
class _Base:
    state: State
    chain_head: bytes | None  # None: not known (the fold checks the next event's own hash only)


class StateService:
    """Folds the log on demand (GetState) and keeps snapshots and retention up to date."""

    def __init__(
        self,
        store: EventStore,
        *,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL,
        retention: int = DEFAULT_RETENTION,
        etcd_history: int = DEFAULT_ETCD_HISTORY,
    ) -> None:
        if snapshot_every < 1 or retention < 0 or snapshot_interval <= 0 or etcd_history < 0:
            raise ValueError("snapshot_every >= 1, snapshot_interval > 0, retention >= 0, etcd_history >= 0")
        self.store = store
        self.etcd_history = etcd_history  # 0: never compact the store's history from here
        self.snapshot_every = snapshot_every
        self.snapshot_interval = snapshot_interval
        self.retention = retention
        self._latest: _Base | None = None  # the newest state folded here: a base for the next fold
        self._snap_cache: tuple[int, State] | None = None
        self.chain_break: ChainBreak | None = None  # the first break of the hash chain seen
        self._lock = asyncio.Lock()  # one fold at a time: they share the cache
        self._nudge = asyncio.Event()
        self._known_head = 0
        self._snapshot_revision = 0

    # --- folding --------------------------------------------------------------------------

    async def state_at(self, revision: int = 0) -> Folded:
        """The folded state and rendered table at ``revision`` (0: the head).

        Raises :class:`Compacted` when neither the log nor the snapshot reaches that far back,
        :class:`RevisionAhead` past the head.
        """
        async with self._lock:
            bounds = await self.store.bounds()
            target = revision or bounds.head
            if target > bounds.head:
                raise RevisionAhead(f"revision {target} is ahead of the head of the log ({bounds.head})")
            folded = await self._fold_to(target, bounds)
            state = folded.state
            if self._latest is None or state.revision >= self._latest.state.revision:
                self._latest = folded
            # CPU-bound, growing with the table: off the event loop, which keeps acknowledging
            # appends meanwhile (the state is immutable, the render pure)
            table = await asyncio.to_thread(render, state)
            return Folded(state, table, bounds, folded.chain_head or b"")

    async def _fold_to(self, target: int, bounds: Bounds) -> _Base:
        for attempt in range(3):
            base = await self._base(target, bounds, use_cache=attempt == 0)
            try:
                return await self._fold_range(base, target)
            except Compacted:
                if attempt == 2:
                    raise
                bounds = await self.store.bounds()  # trimmed meanwhile: start from the snapshot
        raise AssertionError("unreachable")

    async def _base(self, target: int, bounds: Bounds, *, use_cache: bool) -> _Base:
        """The best state to fold forward from: the highest one at or below ``target``."""
        candidates: list[_Base] = []
        if bounds.first <= 1:
            # the log's first event carries the cluster's genesis as its prev_hash
            candidates.append(_Base(State(), None))
        if use_cache and self._latest is not None and self._latest.state.revision <= target:
            candidates.append(self._latest)
        snap = await self.store.get_snapshot()
        if snap is not None and snap.revision <= target:
            candidates.append(_Base(await self._decode_snapshot(snap), snap.chain_head or None))
        usable = [
            b for b in candidates if b.state.revision + 1 >= bounds.first or b.state.revision == target
        ]
        if not usable:
            raise Compacted(target, bounds.first)
        return max(usable, key=lambda b: b.state.revision)

    async def _decode_snapshot(self, snap: SnapshotRecord) -> State:
        if self._snap_cache is not None and self._snap_cache[0] == snap.revision:
            return self._snap_cache[1]
        try:  # CPU-bound, growing with the table: not on the event loop
            state = await asyncio.to_thread(codec.loads, State, snap.state)
        except ValueError as e:
            raise StoreError(f"snapshot at revision {snap.revision} does not decode: {e}") from e
        self._snap_cache = (snap.revision, state)
        return state

    async def _fold_range(self, base: _Base, target: int) -> _Base:
        state = base.state
        if state.revision >= target:
            return base
        chain = ChainFollower(base.chain_head, revision=state.revision, on_break=self._chain_broken)
        # folded in a thread, a page at a time: one ConfigApplied of thousands of servers takes
        # tens of milliseconds (seconds on a slow host), which on the loop would hold up every
        # Publish ack and Subscribe stream of this coordinator
        page: list[pb.Event] = []
        async for item in self.store.read(state.revision + 1, follow=False, to_revision=target):
            page.append(item.event)
            if len(page) >= _FOLD_PAGE:
                state = await asyncio.to_thread(_fold_page, state, page, chain)
                page = []
        if page:
            state = await asyncio.to_thread(_fold_page, state, page, chain)
        if state.revision != target:
            raise StoreError(f"log ended at revision {state.revision}, before {target}")
        return _Base(state, chain.head)

    def _chain_broken(self, found: ChainBreak) -> None:
        """A fold found the hash chain broken (called from the folding thread)."""
        if self.chain_break is None or found.revision < self.chain_break.revision:
            self.chain_break = found
        log.error("hash chain broken: a log entry changed outside the coordinators", detail=found.describe())

    # --- snapshots and retention ----------------------------------------------------------

    def appended(self, head: int) -> None:
        """Appender callback: the log grew to ``head``."""
        self._known_head = max(self._known_head, head)
        if self._known_head - self._snapshot_revision >= self.snapshot_every:
            self._nudge.set()

    async def snapshot_once(self) -> SnapshotRecord | None:
        """Write a snapshot at the head (if it moved since the last one), then apply retention."""
        current = await self.store.snapshot_revision()
        bounds = await self.store.bounds()
        self._snapshot_revision = max(self._snapshot_revision, current)
        written: SnapshotRecord | None = None
        if bounds.head > current:
            folded = await self.state_at(bounds.head)
            broken = self.chain_break
            if broken is not None and broken.revision <= folded.revision:
                raise ChainBrokenError(f"no snapshot past a broken hash chain: {broken.describe()}")
            # CPU-bound, growing with the table: in a thread, not on the loop
            state_json, digest = await asyncio.to_thread(lambda: (folded.state_json(), folded.table.digest()))
            record = SnapshotRecord(folded.revision, state_json, digest, folded.chain_head)
            if await self.store.put_snapshot(record):
                written = record
                current = record.revision
                self._snapshot_revision = record.revision
                log.info("snapshot written", revision=record.revision, table_digest=record.table_digest)
        if current:
            keep_from = current - self.retention + 1
            if keep_from > bounds.first:
                deleted = await self.store.trim(keep_from)
                log.info("log trimmed", first=keep_from, deleted=deleted, snapshot_revision=current)
        if self.etcd_history:
            compacted = await self.store.compact_history(self.etcd_history)
            if compacted is not None:
                log.info("etcd history compacted", etcd_revision=compacted)
        return written

    async def run(self) -> None:
        """Snapshot every ``snapshot_every`` events (nudged by the appender) or every interval."""
        last = time.monotonic()
        while True:
            timeout = max(0.0, self.snapshot_interval - (time.monotonic() - last))
            try:
                async with asyncio.timeout(timeout):
                    await self._nudge.wait()
            except TimeoutError:
                pass
            self._nudge.clear()
            try:
                await self.snapshot_once()
            except (StoreError, Compacted) as e:
                log.warning("snapshot failed; will retry", error=str(e))
            last = time.monotonic()
