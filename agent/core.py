"""The agent's decision step: pure, synchronous, no I/O, no clock (``now`` is passed in).

The I/O shell feeds it log items (:meth:`ApplyCore.step`), asks what to do
(:meth:`ApplyCore.ready`), does it, and reports back (:meth:`ApplyCore.advance`). Between
``ready`` calls any number of items may be stepped: that is how catching up is batched (one
render, one reconcile, one persist for the whole backlog), as in etcd-io/raft's ``Ready``.

Decisions:

* **reconcile** the dataplane when the rendered table differs from the one last applied, at start
  (nothing applied yet), after a failed or unverified apply, and every ``resync_interval``
  seconds (anti-entropy: somebody may have edited the kernel table behind our back);
* **persist** the folded state when its revision advanced and either the table changed or
  ``persist_interval`` seconds passed since the last write (a restart then replays at most that
  much of the log, which is harmless: the fold is idempotent);
* **publish** ``TableApplied`` when the applied digest differs from the one the log last recorded
  for this node, once caught up with the log head (or after ``publish_delay`` seconds when the log
  keeps moving), at most once per ``min_publish_interval``, and not again while the same digest is
  in flight (``republish_after`` seconds): catching up publishes once, not once per event.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvs_events.client import Snapshot
from lvs_events.domain.events import Event, TableApplied
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold
from lvs_events.domain.table import Table

__all__ = ["ApplyCore", "Policy", "Ready"]


@dataclass(frozen=True, slots=True)
class Policy:
    persist_interval: float = 1.0
    publish_delay: float = 1.0
    min_publish_interval: float = 0.5  # at most two TableApplied a second from a node
    republish_after: float = 10.0
    resync_interval: float = 60.0
    retry_after: float = 1.0  # after a failed reconcile


@dataclass(frozen=True, slots=True)
class Ready:
    """What the shell must do now, in this order: reconcile, persist, publish."""

    revision: int  # state revision this is about
    state: State  # the folded state at ``revision`` (immutable: safe to encode in a thread)
    desired: Table | None  # reconcile the dataplane to this table; None: leave it
    desired_digest: str  # digest of the rendered table at ``revision``
    persist: bool  # write ``state`` as the applied revision
    publish: TableApplied | None  # publish this after a successful, verified reconcile

    @property
    def empty(self) -> bool:
        return self.desired is None and not self.persist and self.publish is None


class ApplyCore:
    """Fold, render, decide. All times are monotonic seconds supplied by the caller."""

    def __init__(self, node: str, state: State | None = None, *, policy: Policy | None = None) -> None:
        self.node = node
        self.policy = policy or Policy()
        self.state = state or State()
        self.start_revision = self.state.revision  # where this process started from (for tests/status)
        self.events_folded = 0
        self.snapshots_loaded = 0
        # rendered
        self._rendered_revision = -1
        self._desired = Table()
        self._desired_digest = ""
        # applied
        self._applied: Table | None = None  # None: the dataplane's content is unknown
        self._applied_digest = ""
        self._applied_revision = 0
        self._reconciled_at: float | None = None
        self._retry_at: float | None = None
        # persisted
        self._persisted_revision = self.state.revision
        self._persisted_at: float | None = None
        # published
        self._inflight_digest = ""
        self._inflight_at = 0.0
        self._publish_pending_since: float | None = None

    # -- inputs --------------------------------------------------------------------------------

    def step(self, item: Event | Snapshot) -> None:
        """Fold one log item. Items at or below the current revision are ignored."""
        if isinstance(item, Snapshot):
            if item.revision > self.state.revision:
                self.state = item.state
                self.snapshots_loaded += 1
            return
        before = self.state.revision
        self.state = fold(self.state, item)
        if self.state.revision != before:
            self.events_folded += 1

    @property
    def applied_revision(self) -> int:
        return self._applied_revision

    @property
    def applied_digest(self) -> str:
        return self._applied_digest

    @property
    def persisted_revision(self) -> int:
        return self._persisted_revision

    def reported_digest(self) -> str:
        """The digest the log last recorded for this node (its own ``TableApplied``)."""
        ns = self.state.nodes.get(self.node)
        return ns.digest if ns is not None else ""

    # -- the decision --------------------------------------------------------------------------

    def ready(self, now: float, *, caught_up: bool) -> Ready | None:
        """What to do now, or None when nothing is due (see :meth:`next_deadline` for when to ask again)."""
        s = self.state
        if s.revision != self._rendered_revision:
            desired = render(s)
            if desired != self._desired or not self._desired_digest:
                self._desired = desired
                self._desired_digest = desired.digest()
            self._rendered_revision = s.revision
        table_changed = self._applied is None or self._desired != self._applied
        retry_due = self._retry_at is not None and now >= self._retry_at
        resync_due = (
            self._reconciled_at is not None and now - self._reconciled_at >= self.policy.resync_interval
        )
        reconcile = (table_changed and self._retry_at is None) or retry_due or resync_due
        persist = s.revision > self._persisted_revision and (
            table_changed
            or self._persisted_at is None
            or now - self._persisted_at >= self.policy.persist_interval
        )
        publish = self._publish_decision(now, caught_up=caught_up, reconciling=reconcile)
        ready = Ready(
            revision=s.revision,
            state=s,
            desired=self._desired if reconcile else None,
            desired_digest=self._desired_digest,
            persist=persist,
            publish=publish,
        )
        return None if ready.empty else ready

    def _publish_decision(self, now: float, *, caught_up: bool, reconciling: bool) -> TableApplied | None:
        # The digest the dataplane will hold after this Ready: the desired one if we reconcile now.
        digest = self._desired_digest if reconciling else self._applied_digest
        applied_ok = reconciling or (self._applied is not None and self._retry_at is None)
        if not applied_ok or not digest or digest == self.reported_digest():
            self._publish_pending_since = None
            return None
        if digest == self._inflight_digest and now - self._inflight_at < self.policy.republish_after:
            return None
        if self._publish_pending_since is None:
            self._publish_pending_since = now
        if self._inflight_digest and now - self._inflight_at < self.policy.min_publish_interval:
            return None
        if not caught_up and now - self._publish_pending_since < self.policy.publish_delay:
            return None
        return TableApplied(node=self.node, revision=self.state.revision, digest=digest)

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`ready` may have something to do without new items."""
        times: list[float] = []
        if self._retry_at is not None:
            times.append(self._retry_at)
        if self._reconciled_at is not None:
            times.append(self._reconciled_at + self.policy.resync_interval)
        if self.state.revision > self._persisted_revision and self._persisted_at is not None:
            times.append(self._persisted_at + self.policy.persist_interval)
        if self._publish_pending_since is not None:
            times.append(
                max(
                    self._publish_pending_since + self.policy.publish_delay,
                    self._inflight_at + self.policy.min_publish_interval,
                )
                if self._inflight_digest
                else self._publish_pending_since + self.policy.publish_delay
            )
        if self._inflight_digest and self._inflight_digest != self.reported_digest():
            times.append(self._inflight_at + self.policy.republish_after)
        return min(times) if times else None

    # -- outcomes ------------------------------------------------------------------------------

    def advance(self, ready: Ready, now: float, *, actual_digest: str | None, published: bool) -> None:
        """Record what the shell did for ``ready``. ``actual_digest``: digest of the dataplane as
        dumped after the reconcile (None when ``ready.desired`` was None)."""
        if ready.desired is not None:
            if actual_digest == ready.desired_digest:
                self._applied = ready.desired
                self._applied_digest = ready.desired_digest
                self._applied_revision = ready.revision
                self._retry_at = None
            else:  # the dataplane does not hold what we asked for: try again later
                self._applied = None
                self._applied_digest = actual_digest or ""
                self._retry_at = now + self.policy.retry_after
            self._reconciled_at = now
        if ready.persist:
            self._persisted_revision = max(self._persisted_revision, ready.revision)
            self._persisted_at = now
        if ready.publish is not None and published:
            self._inflight_digest = ready.publish.digest
            self._inflight_at = now
            self._publish_pending_since = None

    def reconcile_failed(self, ready: Ready, now: float) -> None:
        """The dataplane refused: forget what it holds, retry after ``retry_after``."""
        self._applied = None
        self._applied_digest = ""
        self._reconciled_at = now
        self._retry_at = now + self.policy.retry_after

    def persist_failed(self, now: float) -> None:
        self._persisted_at = now  # try again after persist_interval
