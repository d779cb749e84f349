"""The agent's decision step: pure, synchronous, no I/O, no clock (``now`` is passed in).

The I/O shell feeds it log items (:meth:`ApplyCore.step`), asks what to do
(:meth:`ApplyCore.ready`), does it, and reports back (:meth:`ApplyCore.advance`). Between
``ready`` calls any number of items may be stepped: that is how catching up is batched (one
render, one reconcile, one persist for the whole backlog), as in etcd-io/raft's ``Ready``.

Decisions:

* **reconcile** the dataplane when the rendered table differs from the one last applied, at start
  (nothing applied yet), after a failed or unverified apply, and every ``resync_interval``
  seconds (anti-entropy: somebody may have edited the kernel table behind our back);
* **persist** the folded state when its revision advanced and ``persist_interval`` seconds passed
  since the last write, and at least ``persist_cost_factor`` times as long as that write took (a
  big state costs a write of megabytes: it may take at most about 1/factor of the agent's time).
  A restart then replays at most that much of the log, which is harmless: the fold is idempotent
  and the reconcile compares the dataplane with the table, not with what was persisted. The shell
  may write in the background (:meth:`ApplyCore.persist_started`, then :meth:`ApplyCore.persisted`
  or :meth:`ApplyCore.persist_failed`): no other write is asked for while one is under way;
* **publish** ``TableApplied`` when the applied digest differs from the one the log last recorded
  for this node, once caught up with the log head (or after ``publish_delay`` seconds when the log
  keeps moving), at most once per ``min_publish_interval``, and not again while the same digest is
  in flight (``republish_after`` seconds): catching up publishes once, not once per event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lvs_events.domain.events import Event, TableApplied
from lvs_events.domain.render import TableRenderer, expiring_reals, touched_reals, virtual_positions
from lvs_events.domain.snapshot import Snapshot
from lvs_events.domain.state import RealKey, State, fold
from lvs_events.domain.table import DestChanges, Service, ServiceChanges, Table, digest_of_parts

__all__ = ["ApplyCore", "Policy", "Ready"]


@dataclass(frozen=True, slots=True)
class Policy:
    persist_interval: float = 1.0
    persist_cost_factor: float = 10.0  # wait at least this many times the last write's duration
    publish_delay: float = 1.0
    min_publish_interval: float = 0.5  # at most two TableApplied a second from a node
    republish_after: float = 10.0
    resync_interval: float = 60.0
    retry_after: float = 1.0  # after a failed reconcile


class _LazyDigest:
    """A digest computed when first asked for (after the kernel's ack, on the per-event path)."""

    __slots__ = ("_fn", "_value")

    def __init__(self, fn: Callable[[], str]) -> None:
        self._fn: Callable[[], str] | None = fn
        self._value = ""

    def __call__(self) -> str:
        if self._fn is not None:
            self._value, self._fn = self._fn(), None
        return self._value


@dataclass(frozen=True, slots=True)
class Ready:
    """What the shell must do now, in this order: reconcile, persist, publish."""

    revision: int  # state revision this is about
    state: State  # the folded state at ``revision`` (immutable: safe to encode in a thread)
    desired: Table | None  # reconcile the dataplane to this table; None: leave it
    digest: str | _LazyDigest  # see desired_digest
    persist: bool  # write ``state`` as the applied revision
    publish: TableApplied | None  # publish this after a successful, verified reconcile
    # The per-event path: the dataplane already holds ``desired`` except for these services (the
    # desired service by key); reconcile just them. None: reconcile the whole table. Built by the
    # core as a ``ServiceChanges``: with, per service, the destinations that changed since the
    # applied table (a dataplane holding that very service applies just those).
    changed: Mapping[str, Service | None] | None = None

    @property
    def desired_digest(self) -> str:
        """Digest of the rendered table at ``revision`` (computed on first use)."""
        d = self.digest
        return d if isinstance(d, str) else d()

    @property
    def empty(self) -> bool:
        return self.desired is None and not self.persist and self.publish is None


@dataclass(frozen=True, slots=True)
class FullRender:
    """A whole-table render of ``state``, made off the event loop (:func:`render_full`)."""

    state: State
    renderer: TableRenderer
    digest: str
    positions: dict[str, tuple[int, ...]]


def render_full(state: State) -> FullRender:
    """Render every service of ``state`` (pure: safe in a thread, the state is immutable).

    It costs O(table), far more than an event at a new configuration of thousands of real
    servers: the runtime calls it in a thread and hands the result to :meth:`ApplyCore.adopt`,
    so that the event loop (health checks, HA heartbeats) does not wait.
    """
    r = TableRenderer(state)
    return FullRender(state, r, r.digest(), virtual_positions(state.config))


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
        self._desired_digest: str | _LazyDigest = ""
        # the incremental render: valid while the config object stays the same
        self._renderer: TableRenderer | None = None
        self._rendered_clock = 0.0
        self._positions: dict[str, tuple[int, ...]] = {}
        self._prepared: FullRender | None = None  # a whole-table render made elsewhere (adopt)
        self._touched: set[RealKey] | None = None  # (virtual, real) touched since the last render; None: all
        self._unapplied: set[str] | None = None  # services that may differ from _applied; None: all
        # ... and in those, the destinations that may differ (by service key; absent: unknown)
        self._unapplied_dests: dict[str, set[str]] = {}
        # applied
        self._applied: Table | None = None  # None: the dataplane's content is unknown
        self._applied_digest = ""
        self._applied_revision = 0
        self._reconciled_at: float | None = None
        self._retry_at: float | None = None
        # persisted
        self._persisted_revision = self.state.revision
        self._persisted_at: float | None = None
        self._persist_cost = 0.0
        self._persisting = False  # a background write is under way (persist_started)
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
                self._touched = None
            return
        before = self.state.revision
        self.state = fold(self.state, item)
        if self.state.revision != before:
            self.events_folded += 1
            touched = touched_reals(item)
            if touched is None:
                self._touched = None
            elif self._touched is not None:
                self._touched.update(touched)

    @property
    def applied_revision(self) -> int:
        return self._applied_revision

    @property
    def holds_revision(self) -> int:
        """The newest folded revision whose table the dataplane holds: the folded revision once
        its table is rendered and applied, else the last revision applied."""
        if (
            self._rendered_revision == self.state.revision
            and self._retry_at is None
            and self._applied is not None
            and (self._applied is self._desired or self._applied == self._desired)
        ):
            return self.state.revision
        return self._applied_revision

    @property
    def applied_table(self) -> Table | None:
        """The table last applied and verified (None: unknown, a reconcile is due)."""
        return None if self._retry_at is not None else self._applied

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

    def full_render_due(self) -> bool:
        """The next :meth:`ready` would render the whole table (a new configuration, a snapshot,
        a leader change): worth doing off the event loop with :func:`render_full`."""
        s = self.state
        if s.revision == self._rendered_revision:
            return False
        return not self._incremental(s) and (self._prepared is None or self._prepared.state is not s)

    def _incremental(self, s: State) -> bool:
        """Can ``s`` be rendered from the last render (same config object, no leader change or
        snapshot since: only real servers touched)?"""
        r = self._renderer
        return self._touched is not None and r is not None and s.config is r.config

    def adopt(self, prepared: FullRender) -> None:
        """Use ``prepared`` for the next whole-table render if it is of the current state."""
        if prepared.state is self.state:
            self._prepared = prepared

    # -- the decision --------------------------------------------------------------------------

    def ready(self, now: float, *, caught_up: bool) -> Ready | None:
        """What to do now, or None when nothing is due (see :meth:`next_deadline` for when to ask again)."""
        s = self.state
        if s.revision != self._rendered_revision:
            self._render(s)
        table_changed = self._applied is None or self._desired != self._applied
        retry_due = self._retry_at is not None and now >= self._retry_at
        resync_due = (
            self._reconciled_at is not None and now - self._reconciled_at >= self.policy.resync_interval
        )
        reconcile = (table_changed and self._retry_at is None) or retry_due or resync_due
        changed = None
        if reconcile and not (retry_due or resync_due) and self._unapplied:
            changed = self._changed_services(self._unapplied)
        persist = (
            s.revision > self._persisted_revision
            and not self._persisting
            and (self._persisted_at is None or now - self._persisted_at >= self._persist_every())
        )
        # On the per-event path the digest waits until after the kernel's ack; so does the
        # TableApplied decision (the next ``ready`` makes it, from the applied digest).
        publish = (
            None
            if changed is not None
            else self._publish_decision(now, caught_up=caught_up, reconciling=reconcile)
        )
        ready = Ready(
            revision=s.revision,
            state=s,
            desired=self._desired if reconcile else None,
            digest=self._desired_digest,
            persist=persist,
            publish=publish,
            changed=changed,
        )
        return None if ready.empty else ready

    def _render(self, s: State) -> None:
        """Render the table at ``s``: only the real servers touched since the last render when the
        config object is the same (and no leader change or snapshot intervened), else all."""
        r = self._renderer
        if r is not None and self._touched is not None and self._incremental(s):
            reals = self._touched | expiring_reals(s, self._rendered_clock, s.clock)
            changed = r.update(s, reals) if reals else {}
            if changed:
                self._desired = r.table
                parts = r.digest_parts()  # hashed after the kernel's ack, if asked for
                self._desired_digest = _LazyDigest(lambda: digest_of_parts(parts))
                if self._unapplied is not None:
                    for i, dest_keys in changed.items():
                        key = r.table.services[i].key
                        if key not in self._unapplied:
                            self._unapplied.add(key)
                            self._unapplied_dests[key] = set(dest_keys)
                        elif key in self._unapplied_dests:
                            self._unapplied_dests[key].update(dest_keys)
        else:
            prepared, self._prepared = self._prepared, None
            if prepared is None or prepared.state is not s:
                prepared = render_full(s)
            r = self._renderer = prepared.renderer
            desired = r.table
            if desired != self._desired or not self._desired_digest:
                self._desired = desired
                self._desired_digest = prepared.digest
                self._unapplied = None  # which services differ from the applied table: unknown
                self._unapplied_dests = {}
            self._positions = prepared.positions
        self._rendered_clock = s.clock
        self._rendered_revision = s.revision
        self._touched = set()

    def _changed_services(self, keys: set[str]) -> ServiceChanges | None:
        """The services to reconcile, each with its destinations that changed since the table
        last applied (a delta on that table's service object, which the dataplane holds)."""
        out: dict[str, Service | None] = {}
        deltas: dict[str, DestChanges] = {}
        r, applied = self._renderer, self._applied
        for key in keys:
            at = self._positions.get(key, ())
            if not at:
                continue  # not a virtual service of this config: nothing to apply
            if len(at) > 1:
                return None  # a key the config has twice: the whole table
            i = at[0]
            out[key] = self._desired.services[i]
            dest_keys = self._unapplied_dests.get(key)
            if dest_keys is not None and r is not None and applied is not None and i < len(applied.services):
                deltas[key] = DestChanges(applied.services[i], {dk: r.dest(i, dk) for dk in dest_keys})
        return ServiceChanges(out, deltas) if out else None

    def _publish_decision(self, now: float, *, caught_up: bool, reconciling: bool) -> TableApplied | None:
        # The digest the dataplane will hold after this Ready: the desired one if we reconcile now.
        d = self._desired_digest
        digest = (d if isinstance(d, str) else d()) if reconciling else self._applied_digest
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
        if (
            self.state.revision > self._persisted_revision
            and self._persisted_at is not None
            and not self._persisting  # its end is news by itself (persisted / persist_failed)
        ):
            times.append(self._persisted_at + self._persist_every())
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
                # from now on a change of a few services is applied as just those services
                self._unapplied = set() if ready.desired is self._desired else None
                self._unapplied_dests = {}
            else:  # the dataplane does not hold what we asked for: try again later
                self._applied = None
                self._applied_digest = actual_digest or ""
                self._retry_at = now + self.policy.retry_after
                self._unapplied = None
                self._unapplied_dests = {}
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
        self._unapplied = None
        self._unapplied_dests = {}
        self._reconciled_at = now
        self._retry_at = now + self.policy.retry_after

    def _persist_every(self) -> float:
        return max(self.policy.persist_interval, self.policy.persist_cost_factor * self._persist_cost)

    def persist_took(self, seconds: float) -> None:
        """How long the last write of the state took (it paces the next one)."""
        self._persist_cost = seconds

    def persist_started(self) -> None:
        """The shell took a ``Ready.persist`` to write in the background (it passes that Ready to
        :meth:`advance` with ``persist`` False): no other write is asked for until it reports back
        with :meth:`persisted` or :meth:`persist_failed`."""
        self._persisting = True

    @property
    def persisting(self) -> bool:
        return self._persisting

    def persisted(self, revision: int, now: float) -> None:
        """The shell wrote the state at ``revision``: a background write done, or one outside
        :meth:`ready` (the final write on drain)."""
        self._persisting = False
        self._persisted_revision = max(self._persisted_revision, revision)
        self._persisted_at = now

    def persist_failed(self, now: float) -> None:
        self._persisting = False
        self._persisted_at = now  # try again after persist_interval
