"""Time that moves on a quiet log: a coordinator ends operator overrides when they expire.

The fold's "now" is the highest wall time in the log (:mod:`lvs_events.domain.state`), so on a
log with no traffic an override with an expiry would never end. This task appends an
:class:`~lvs_events.domain.events.OverrideExpired` when the wall clock passes an override's
``expires_at``, stamped with the time it appends. The event id is derived from the override's
revision (:func:`expiry_event_id`): every coordinator of the cluster runs this task, the log's
dedupe by event id keeps one of their events, and the fold ends the override at that event's
revision on every node.

What it watches is the store's :class:`~lvs_events.coordinator.stores.ExpiryIndex` (override
revision -> expires_at), which the append transaction keeps with the overrides themselves, not
the log: following the log would cost every coordinator a watch delivery and a decode of every
event, on the append path's CPU. The log stays the truth: when an entry comes due the task folds the
state and appends only for an override still in force at that revision; an entry whose
override ended otherwise (replaced, enabled, its server removed) is dropped from the index. On
start, and every :data:`SWEEP_EVERY` seconds, the task also indexes any override in force that
the index lacks (one appended before the index existed, or by a coordinator of an older version
during a rolling upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

import structlog

from lvs_events import wire
from lvs_events.coordinator.appender import Appender, check_event
from lvs_events.coordinator.snapshots import StateService
from lvs_events.coordinator.stores import ExpiryIndex
from lvs_events.domain.events import Event, OverrideExpired, expiry_event_id
from lvs_events.domain.state import RealKey
from lvs_events.errors import Compacted, InvalidEvent, StoreError
from lvs_events.retry import RetryPolicy

log = structlog.get_logger(__name__)

ACTOR = "lvs-coordinator"
# Errors of the store (etcd away, the log trimmed under the reader) restart the task after a
# backoff: a missed expiry is appended late, never lost, as the index is read again.
ERROR_RETRY = RetryPolicy(initial=0.5, cap=10.0)
SWEEP_EVERY = 300.0  # seconds between looks for overrides in force that the index lacks


def _origin() -> str:
    name = socket.gethostname().split(".")[0]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) or "coordinator"


class ExpiryTask:
    """Watches the expiry index and appends :class:`OverrideExpired` events on time (see the
    module)."""

    def __init__(
        self,
        index: ExpiryIndex,
        appender: Appender,
        states: StateService,
        cluster: str,
        *,
        clock: Callable[[], float] = time.time,
        origin: str = "",
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        self.index = index
        self.sweep_every = sweep_every
        self.appender = appender
        self.states = states
        self.cluster = cluster
        self.clock = clock
        self.origin = origin or _origin()
        self.entries: dict[int, float] = {}  # the index as last read: override revision -> expires_at
        self._changed = asyncio.Event()
        self.appended = 0  # OverrideExpired events this task appended (duplicates included)
        self.dropped = 0  # index entries this task dropped (their override had ended otherwise)

    async def run(self) -> None:
        backoff = ERROR_RETRY.start()
        while True:
            try:
                self.entries, at = await self.index.expiries()
                await self._backfill()
                self._changed.set()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._follow(at + 1), name="expiry-follow")
                    tg.create_task(self._expire(), name="expiry-timer")
                    tg.create_task(self._sweep(), name="expiry-sweep")
            except* (StoreError, Compacted) as group:
                delay = backoff.next_delay()
                log.warning(
                    "override expiry: store error; restarting", error=str(group.exceptions[0]), retry_in=delay
                )
                await asyncio.sleep(delay)

    async def _backfill(self) -> None:
        """Index the overrides in force with an expiry that the index lacks."""
        state = (await self.states.state_at(0)).state
        for ov in state.overrides.values():
            if ov.expires_at > 0.0 and ov.revision not in self.entries:
                await self.index.index_expiry(ov.revision, ov.expires_at)
                self.entries[ov.revision] = ov.expires_at
                log.info("override expiry indexed", override_revision=ov.revision, expires_at=ov.expires_at)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            await self._backfill()
            self._changed.set()

    async def _follow(self, start_revision: int) -> None:
        async for _ in self.index.watch_expiries(start_revision):
            self.entries, _ = await self.index.expiries()
            self._changed.set()

    async def _expire(self) -> None:
        while True:
            self._changed.clear()
            now = self.clock()
            if any(t <= now for t in self.entries.values()):
                await self._end_due(now)
            # entries just handled stay in the index until its next change removes them
            pending = [t for t in self.entries.values() if t > now]
            wait = max(0.0, min(pending) - self.clock()) if pending else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    async def _end_due(self, now: float) -> None:
        """End every override whose entry is due; drop the entries whose override ended otherwise."""
        state = (await self.states.state_at(0)).state
        in_force = {ov.revision: key for key, ov in state.overrides.items()}
        for revision in sorted(r for r, t in self.entries.items() if t <= now):
            key = in_force.get(revision)
            if key is not None:
                await self._append(key, revision, now)
            else:
                await self.index.drop_expiry(revision)
                self.dropped += 1
                log.debug("override expiry dropped: the override ended otherwise", override_revision=revision)
            # handled: not again until the index is read again (which no longer holds it)
            self.entries.pop(revision, None)

    async def _append(self, key: RealKey, revision: int, now: float) -> None:
        virtual, real = key
        event = Event(
            event_id=expiry_event_id(self.cluster, revision),
            cluster=self.cluster,
            origin=self.origin,
            actor=ACTOR,
            reason="expired",
            wall_time=now,
            payload=OverrideExpired(virtual, real, revision),
        )
        msg = wire.event_to_pb(event)
        try:
            size = check_event(msg, self.cluster)
        except InvalidEvent as e:  # a key the log accepted once is valid again: a bug if not
            log.exception("override expiry refused by validation", error=str(e), override_revision=revision)
            await self.index.drop_expiry(revision)
            return
        appended = await self.appender.append(msg, size)
        self.appended += 1
        log.info(
            "override expired",
            virtual=virtual,
            real=real,
            override_revision=revision,
            revision=appended.revision,
            duplicate=appended.duplicate,
        )
