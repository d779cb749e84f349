"""Time that moves on a quiet log: a coordinator ends operator overrides when they expire.

The fold's "now" is the highest wall time in the log (:mod:`lvs_events.domain.state`), so on a
log with no traffic an override with an expiry would never end. This task follows the log,
folds it, and when the wall clock passes an override's ``expires_at`` appends an
:class:`~lvs_events.domain.events.OverrideExpired` for it, stamped with the time it appends.
The event id is derived from the override's revision (:func:`expiry_event_id`): every
coordinator of the cluster runs this task, the log's dedupe by event id keeps one of their
events, and the fold ends the override at that event's revision on every node.

An override replaced by a later one before it expired is left to the later one: the fold ends
only the override whose revision the event names.
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
from lvs_events.coordinator.stores import EventStore
from lvs_events.domain.events import Event, OverrideExpired, expiry_event_id
from lvs_events.domain.state import RealKey, State, fold
from lvs_events.errors import Compacted, InvalidEvent, StoreError
from lvs_events.retry import RetryPolicy

log = structlog.get_logger(__name__)

ACTOR = "lvs-coordinator"
# The payloads (oneof fields of pb.Event) that set or end an override: the only ones folded here.
# The state's clock and revision then lag behind the log, which nothing here reads.
_OVERRIDE_PAYLOADS = frozenset({"admin_override", "override_expired", "config_applied"})
# Errors of the store (etcd away, the log trimmed under the reader) restart the task after a
# backoff: a missed expiry is appended late, never lost, as the state is folded again.
ERROR_RETRY = RetryPolicy(initial=0.5, cap=10.0)


def due(state: State, now: float) -> list[tuple[RealKey, int]]:
    """The overrides whose expiry ``now`` has reached: (virtual, real) and the override's revision."""
    return sorted((key, ov.revision) for key, ov in state.overrides.items() if 0.0 < ov.expires_at <= now)


def next_expiry(state: State) -> float | None:
    """The earliest expiry among the overrides in ``state``; None: none expires."""
    times = [ov.expires_at for ov in state.overrides.values() if ov.expires_at > 0.0]
    return min(times) if times else None


def _origin() -> str:
    name = socket.gethostname().split(".")[0]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) or "coordinator"


class ExpiryTask:
    """Follows the log and appends :class:`OverrideExpired` events on time (see the module)."""

    def __init__(
        self,
        store: EventStore,
        appender: Appender,
        states: StateService,
        cluster: str,
        *,
        clock: Callable[[], float] = time.time,
        origin: str = "",
    ) -> None:
        self.store = store
        self.appender = appender
        self.states = states
        self.cluster = cluster
        self.clock = clock
        self.origin = origin or _origin()
        self.state = State()
        self._changed = asyncio.Event()
        self._sent: set[int] = set()  # override revisions whose expiry this task appended

    async def run(self) -> None:
        backoff = ERROR_RETRY.start()
        while True:
            try:
                self.state = (await self.states.state_at(0)).state
                self._changed.set()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._follow(), name="expiry-follow")
                    tg.create_task(self._expire(), name="expiry-timer")
            except* (StoreError, Compacted) as group:
                delay = backoff.next_delay()
                log.warning(
                    "override expiry: store error; restarting", error=str(group.exceptions[0]), retry_in=delay
                )
                await asyncio.sleep(delay)

    async def _follow(self) -> None:
        async for item in self.store.read(self.state.revision + 1, follow=True):
            which = item.event.WhichOneof("payload")
            if which not in _OVERRIDE_PAYLOADS:  # the rest never sets or ends an override
                continue
            if which == "config_applied":  # thousands of servers: decoded off the event loop
                event = await asyncio.to_thread(wire.event_from_pb, item.event)
            else:
                event = wire.event_from_pb(item.event)
            self.state = fold(self.state, event)
            self._changed.set()

    async def _expire(self) -> None:
        while True:
            self._changed.clear()
            self._sent &= {ov.revision for ov in self.state.overrides.values()}
            now = self.clock()
            for (virtual, real), revision in due(self.state, now):
                if revision not in self._sent:
                    await self._append(virtual, real, revision, now)
            # the overrides this task ended stay in the state until the log brings the event back
            pending = [
                ov.expires_at
                for ov in self.state.overrides.values()
                if ov.expires_at > 0.0 and ov.revision not in self._sent
            ]
            wait = max(0.0, min(pending) - self.clock()) if pending else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    async def _append(self, virtual: str, real: str, revision: int, now: float) -> None:
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
            self._sent.add(revision)
            return
        appended = await self.appender.append(msg, size)
        self._sent.add(revision)
        log.info(
            "override expired",
            virtual=virtual,
            real=real,
            override_revision=revision,
            revision=appended.revision,
            duplicate=appended.duplicate,
        )
