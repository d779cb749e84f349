"""The coordinator's contracts with its storage: :class:`EventStore`, :class:`ExpiryIndex` and
:class:`LeaderStore`.

The coordinator (server, appender, snapshots, election) calls its stores only through these
protocols; :mod:`lvs_events.etcd` implements them on etcd (``EtcdEventStore``,
``EtcdLeaderStore``), and only :func:`lvs_events.coordinator.server.serve_coordinator` names
those classes. The value types are the etcd layer's records (pure, no etcd client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from lvs_events.etcd.records import (
    Appended,
    Bounds,
    ElectionOutcome,
    KeepAliveOutcome,
    LeaderEvents,
    LeaderRecord,
    LogItem,
    SnapshotRecord,
)
from lvs_events.pb.v1 import events_pb2 as pb

__all__ = [
    "Appended",
    "Bounds",
    "ElectionOutcome",
    "EventStore",
    "ExpiryIndex",
    "KeepAliveOutcome",
    "LeaderEvents",
    "LeaderRecord",
    "LeaderStore",
    "LogItem",
    "SnapshotRecord",
]


class EventStore(Protocol):
    """A durable, totally ordered log with dense revisions (1, 2, 3, ...), its newest snapshot
    and retention. Errors: :class:`lvs_events.errors.StoreError` (``StoreUnavailable`` when a
    retry may help), :class:`~lvs_events.errors.Compacted`, :class:`~lvs_events.errors.Fenced`."""

    @property
    def max_batch_events(self) -> int:
        """Most events one :meth:`append` takes."""
        ...

    def indexed(self, event: pb.Event) -> bool:
        """Whether appending ``event`` changes the :class:`ExpiryIndex` (an override with an
        expiry, or its ``OverrideExpired``): such an event costs its :meth:`append` more."""
        ...

    def fits(self, events: int, indexed: int) -> bool:
        """Whether ``events`` events, ``indexed`` of them :meth:`indexed`, make one :meth:`append`
        (true for a batch of :attr:`max_batch_events` with one indexed)."""
        ...

    async def ping(self) -> None:
        """Raises StoreError when the store does not answer (health)."""
        ...

    async def bounds(self) -> Bounds: ...

    async def append(
        self, events: Sequence[pb.Event], *, require_term: int | None = None, within: float | None = None
    ) -> list[Appended]:
        """Append events (unique event_ids, at most :attr:`max_batch_events`) atomically, in order;
        duplicates are not re-appended and get their original revision. Concurrent calls land
        in the order they were made. Sets each appended event's ``revision``.

        ``require_term``: the append only happens while the leader key holds that term (else
        :class:`~lvs_events.errors.Fenced`). ``within``: seconds until the callers' deadline;
        nothing is sent to the store after it (:class:`~lvs_events.errors.DeadlinePassed`).
        """
        ...

    def read(self, from_revision: int, *, follow: bool, to_revision: int = 0) -> AsyncIterator[LogItem]:
        """Events from ``from_revision`` on (dense, in order, each once), up to ``to_revision``
        (0: the head as of the start, or forever with ``follow``); raises Compacted."""
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


class ExpiryIndex(Protocol):
    """The overrides that end by themselves, by revision: kept by :meth:`EventStore.append` in
    the same transaction as the events that set and end them, so the coordinators' expiry task
    watches this small index instead of following the whole log."""

    async def expiries(self) -> tuple[dict[int, float], int]:
        """Override revision -> expires_at, and the store revision it was read at."""
        ...

    def watch_expiries(self, start_revision: int) -> AsyncIterator[int]:
        """A store revision for each change of the index from ``start_revision`` on; raises
        StoreError when the watch ends (read the index again)."""
        ...

    async def index_expiry(self, override_revision: int, expires_at: float) -> None:
        """Add an entry (an override appended before the index existed); idempotent."""
        ...

    async def drop_expiry(self, override_revision: int) -> None:
        """Remove an entry whose override ended otherwise; idempotent."""
        ...


class LeaderStore(Protocol):
    """The election of the active director: a leader bound to a lease, a term counter, and the
    Leadership events appended to the log in the same transaction as each change. Every call
    takes ``within`` (seconds; None: the store's own timeout)."""

    async def grant(self, ttl: int, *, within: float | None = None) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds)."""
        ...

    async def revoke(self, lease_id: int, *, within: float | None = None) -> None:
        """Revoke a lease (its keys go with it); an unknown or expired lease is not an error."""
        ...

    async def current(self, *, within: float | None = None) -> tuple[LeaderRecord | None, int, int]:
        """(leader or None, term counter, store revision to watch from): one linearizable read."""
        ...

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
        """Become leader with ``lease_id`` if there is no leader (``expect_term`` None) or the
        leader holds ``expect_term`` (a takeover); ``events_for`` gives the events to log."""
        ...

    async def keepalive(self, lease_id: int, term: int, *, within: float | None = None) -> KeepAliveOutcome:
        """Refresh the lease; whether the leader still holds ``term`` with it."""
        ...

    async def resign(
        self, node: str, term: int, *, events_for: LeaderEvents, within: float | None = None
    ) -> ElectionOutcome:
        """Give up ``term`` (logging ``events_for``'s events) if the leader holds it."""
        ...

    def watch(self, start_revision: int) -> AsyncIterator[tuple[LeaderRecord | None, int]]:
        """Changes of the leader from ``start_revision``: (leader or None, store revision).
        Ends with StoreUnavailable when the watch breaks."""
        ...
