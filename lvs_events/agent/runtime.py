"""The agent's I/O shell around :class:`lvs_events.agent.core.ApplyCore`.

Tasks, all in one ``TaskGroup``:

* **subscriber**: follows the log from the stored revision into the inbox (a bounded buffer of
  ``inbox_size`` items). Overflow policy: when the apply loop falls that far behind, the buffered
  items are dropped and the subscriber resyncs from ``GetState`` (one snapshot item stands in
  for the backlog), then follows again after it. A compacted start gets the coordinator's snapshot.
  Before following from a stored revision (at start, after losing every coordinator, at a
  resync) it compares that revision with the log's head: a log behind the agent (etcd restored
  from an older backup) would otherwise never send what the agent waits for, and the agent's
  table would freeze. Then the error is logged with both revisions, the stored state is
  discarded and the agent rebuilds from the coordinator's state (:meth:`Agent._rebase`).
* **apply loop**: drains the inbox, folds everything drained, asks the core for a ``Ready`` and
  carries it out: reconcile the dataplane (verified by a dump), hand the state to the persister,
  publish ``TableApplied``. It never waits for a file: the next event from the log is applied
  while a write of megabytes is under way (a large state's write takes far longer than an
  event's apply, and an event must not wait for it).
* **persister** and **status writer**: write the folded state (atomic write, in a thread) and
  ``status.json`` in the background, one write at a time, the newest item replacing one not yet
  begun (:class:`LatestWriter`).
* **publisher**: the outbox (see :mod:`lvs_events.agent.publisher`).
* **health checker**: reports verdict transitions (see :mod:`lvs_events.agent.health`).
* **config**: with ``publish_config``, publishes ``ConfigApplied`` once if the config in force differs.

Commands named by the configuration (``checkcommand``, ``fallbackcommand``) run only with this
director's consent (:mod:`lvs_events.agent.commands`): at each new configuration revision the
apply loop re-reads this director's own ``--config`` file, decides every command, and publishes
one ``CommandRefused`` per refused command (and logs it as an error).

``stop`` (SIGTERM) drains within ``drain_timeout``: the subscriber and checker stop, the apply loop
finishes what it holds, the persister finishes its write and the state is written once more if it
moved since, the publisher flushes, then everything is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from lvs_events.agent.autoreload import AutoReloader
from lvs_events.agent.checks import Checker
from lvs_events.agent.commands import Allowlist, CommandGate
from lvs_events.agent.config_source import ConfigSourceError, LoadedConfig, load_ldirectord, same_config
from lvs_events.agent.core import ApplyCore, Policy, Ready, render_full
from lvs_events.agent.dataplane import Dataplane, reconcile, reconcile_changed
from lvs_events.agent.drift import DriftChecker
from lvs_events.agent.fallback import FallbackRunner
from lvs_events.agent.ha.runner import HaRunner
from lvs_events.agent.health import HealthChecker, PublisherReporter
from lvs_events.agent.maintenance import MaintenanceWatcher
from lvs_events.agent.persist import StateStore, UnreadableState
from lvs_events.agent.publisher import Publisher
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.chain import HASH_BYTES, ChainBreak, ChainFollower, genesis
from lvs_events.domain.events import (
    ConfigApplied,
    ConfigRejected,
    Event,
    LogIntegrity,
    Payload,
    TableApplied,
)
from lvs_events.domain.snapshot import Snapshot, StateView
from lvs_events.domain.state import State
from lvs_events.domain.table import Op, Table
from lvs_events.errors import CoordinatorUnavailable, DataplaneError
from lvs_events.retry import RetryPolicy

__all__ = ["Agent", "AgentSettings", "Inbox", "LatestWriter"]

T = TypeVar("T")

# Following the log and publishing the configuration at start retry while no coordinator
# answers: 0.4 s after the first failure, doubling up to 5 s (the client already tried every
# coordinator in turn before it gave up).
COORDINATOR_RETRY = RetryPolicy(initial=0.4, cap=5.0)


@dataclass(frozen=True)
class AgentSettings:
    node: str
    cluster: str
    endpoints: tuple[str, ...]
    state_dir: Path
    config: LoadedConfig | None = None
    config_path: Path | None = None  # the ldirectord.cf to watch when autoreload=yes
    publish_config: bool = False
    health_checks: bool = True
    inbox_size: int = 10_000
    outbox_size: int = 10_000
    drain_timeout: float = 5.0
    client_timeout: float = 10.0
    drift_interval: float = 30.0  # the drift check's period (lvs_events.agent.drift); 0: never
    check_capacity: float | None = None  # checks a second admitted; None: measured by the checker
    mass_down_threshold: float = 0.5  # see docs/health-checks.md
    report_interval: float = 10.0  # a TableApplied this often even on a quiet log (liveness); 0: never
    policy: Policy = field(default_factory=Policy)
    # commands a configuration names run only if listed here or named by ``config`` (see
    # lvs_events.agent.commands)
    allowlist: Allowlist = field(default_factory=Allowlist)


class Inbox:
    """Bounded buffer between the subscriber and the apply loop (single producer, single consumer)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.head_revision = 0
        self._items: collections.deque[Event | Snapshot] = collections.deque()
        self._wake = asyncio.Event()

    def offer(self, item: Event | Snapshot, head_revision: int = 0) -> bool:
        """Append ``item``; False (and nothing appended) when full."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        self.head_revision = max(self.head_revision, head_revision)
        self._wake.set()
        return True

    def drain(self) -> list[Event | Snapshot]:
        items = list(self._items)
        self._items.clear()
        return items

    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        return n

    def reset(self, head_revision: int) -> int:
        """Drop everything and forget the head seen so far (the log was replaced by an older one)."""
        self.head_revision = head_revision
        return self.clear()

    def __len__(self) -> int:
        return len(self._items)

    def wake(self) -> None:
        self._wake.set()

    def caught_up(self, revision: int) -> bool:
        return not self._items and revision >= self.head_revision

    async def wait(self, seconds: float | None) -> None:
        """Until something is offered (or :meth:`wake`), or ``seconds`` pass."""
        if self._items:
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            return


class LatestWriter(Generic[T]):
    """Runs ``write(item)`` in its own task, one at a time, for the newest item offered: an offer
    never waits, and replaces an item whose write has not begun (a bounded queue of one: the items
    are whole states or whole status records, so only the newest matters)."""

    def __init__(self, write: Callable[[T], Awaitable[None]]) -> None:
        self._write = write
        self._item: T | None = None
        self._pending = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def offer(self, item: T) -> None:
        self._item, self._pending = item, True
        self._idle.clear()
        self._wake.set()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    async def idle(self) -> None:
        """Until nothing is pending or being written."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                item, self._item, self._pending = self._item, None, False
                await self._write(item)  # type: ignore[arg-type]  # set with _pending
            self._idle.set()


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        dataplane: Dataplane,
        *,
        client: CoordinatorClient | None = None,
        checker: HealthChecker | None = None,
        ha: HaRunner | None = None,
    ) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self._own_client = client is None
        self.client = client or CoordinatorClient(settings.endpoints, timeout=settings.client_timeout)
        self.store = StateStore(settings.state_dir)
        self.log = structlog.get_logger("agent").bind(node=settings.node, cluster=settings.cluster)
        self.inbox = Inbox(settings.inbox_size)
        self.core = ApplyCore(settings.node, policy=settings.policy)
        own = settings.config
        own_source = own.config.source if own is not None else ""
        if settings.config_path is not None:
            own_source = str(settings.config_path)
        self.commands = CommandGate(
            settings.node, settings.allowlist, own.config if own is not None else None, own_source
        )
        self._own_digest = own.digest if own is not None else ""
        if checker is None and settings.health_checks:
            checker = Checker(
                settings.node,
                commands=self.commands,
                capacity=settings.check_capacity,
                mass_down_threshold=settings.mass_down_threshold,
                on_health=self._status_changed,
            )
        self.checker = checker
        self.publisher = Publisher(
            self.client,
            cluster=settings.cluster,
            node=settings.node,
            maxsize=settings.outbox_size,
            on_overflow=self._on_outbox_overflow,
        )
        self.fallbacks = FallbackRunner(self.commands)
        self.ha = ha
        if ha is not None:
            ha.applied = lambda: (self.core.applied_revision, self.core.applied_digest)
        self.started = asyncio.Event()  # set once the stored state is loaded and tasks run
        self._dataplane_lock = asyncio.Lock()  # the apply loop's reconcile vs the drift check
        self.drift = DriftChecker(
            settings.node,
            dataplane,
            self._dataplane_lock,
            applied=lambda: (self.core.applied_revision, self.core.applied_table),
            publish=lambda payload: self.publisher.submit(
                payload, reason="the kernel table changed behind the agent's back"
            ),
            interval=settings.drift_interval,
        )
        self.persister: LatestWriter[tuple[int, State, str]] = LatestWriter(self._persist)
        self._status: LatestWriter[dict[str, object]] = LatestWriter(self._write_status)
        self.resyncs = 0
        self.rebases = 0  # stored states discarded because the log was behind them
        self._rebase_to: Snapshot | None = None  # set by the subscriber, carried out by the apply loop
        self.chain_breaks = 0  # breaks of the log's hash chain found while replaying
        self._stopping = False
        self._freeze_due = False  # a configuration or a snapshot came in: see _freeze_heap

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain (bounded by ``drain_timeout``)."""
        try:
            await self._load()
            async with asyncio.TaskGroup() as tg:
                sub = tg.create_task(self._subscribe_loop(), name="subscriber")
                apply = tg.create_task(self._apply_loop(), name="apply")
                writers = [
                    tg.create_task(self.persister.run(), name="persister"),
                    tg.create_task(self._status.run(), name="status"),
                ]
                pub = tg.create_task(self.publisher.run(), name="publisher")
                side: list[asyncio.Task[None]] = []
                if self.checker is not None:
                    reporter = PublisherReporter(self.publisher if self.ha is None else _Fenced(self))
                    side.append(tg.create_task(self.checker.run(reporter), name="health"))
                ha_stop = asyncio.Event()
                ha_task = None
                if self.ha is not None:
                    ha_task = tg.create_task(self.ha.run(ha_stop), name="ha")
                    if isinstance(self.checker, Checker):
                        watcher = MaintenanceWatcher(self.checker, lambda: self.core.state.config)
                        side.append(tg.create_task(watcher.run(), name="maintenancedir"))
                if self.settings.publish_config and self.settings.config is not None:
                    side.append(tg.create_task(self._publish_config(self.settings.config), name="config"))
                side.append(tg.create_task(self.fallbacks.run(), name="fallbackcommand"))
                if self.settings.drift_interval > 0:
                    side.append(tg.create_task(self.drift.run(), name="drift"))
                if self.settings.config_path is not None:
                    side.append(tg.create_task(self._autoreloader().run(), name="autoreload"))
                if self.settings.report_interval > 0:
                    side.append(tg.create_task(self._report(), name="report"))
                self.started.set()
                await stop.wait()
                if ha_task is not None:  # let go of the VIPs and the leadership first
                    ha_stop.set()
                    await asyncio.wait([ha_task])
                await self._drain(sub, apply, pub, side, writers)
        finally:
            if self._own_client:
                await self.client.close()

    def _autoreloader(self) -> AutoReloader:
        assert self.settings.config_path is not None
        ha = self.ha
        if ha is None:
            # No election (no --peer): the agent that publishes the config at start watches the
            # file; the other only replays.
            return AutoReloader(
                self.settings.config_path,
                self.publisher,
                in_force=lambda: self.core.state.config,
                is_active=lambda: self.settings.publish_config,
            )
        # With an election, the active director watches the file and its reloads carry its term:
        # an active that lost its term cannot change the config (the coordinator fences it).
        return AutoReloader(
            self.settings.config_path,
            self.publisher,
            in_force=lambda: self.core.state.config,
            is_active=lambda: ha.active_term() > 0,
            term=ha.active_term,
        )

    async def _load(self) -> None:
        self.store.ensure_dir()
        try:
            stored = await asyncio.to_thread(self.store.load)
        except UnreadableState as e:
            self.log.exception(
                "agent.state_unreadable", path=str(self.store.path), error=f"{e}: starting from the log"
            )
            stored = None
        if stored is not None and stored.node != self.settings.node:
            # another director's file (a copied state dir, a shared path): its revision numbers
            # may be of another log, so it is never applied here; the log rebuilds ours
            self.log.error(
                "agent.state_other_node",
                path=str(self.store.path),
                stored_node=stored.node,
                stored_revision=stored.revision,
                error=f"the state file is {stored.node!r}'s, not this node's: ignored, starting from the log",
            )
            stored = None
        if stored is not None:
            self.core = ApplyCore(self.settings.node, stored.state, policy=self.settings.policy)
            self._freeze_due = True
        start = self.core.state.revision
        self.log.info("agent.start", revision=start, from_revision=start + 1, pid=os.getpid())
        await self.store.record_start(
            {"pid": os.getpid(), "stored_revision": start, "from_revision": start + 1, "time": time.time()}
        )

    async def _drain(
        self,
        sub: asyncio.Task[None],
        apply: asyncio.Task[None],
        pub: asyncio.Task[None],
        side: list[asyncio.Task[None]],
        writers: list[asyncio.Task[None]],
    ) -> None:
        self.log.info(
            "agent.draining", revision=self.core.state.revision, timeout=self.settings.drain_timeout
        )
        sub.cancel()
        for t in side:
            t.cancel()
        self._stopping = True
        self.inbox.wake()
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await apply
                await self.persister.idle()  # a write under way finishes first (one writer)
                if self.core.state.revision > self.core.persisted_revision:
                    await self._persist_final()
                await self._status.idle()
                await self.publisher.flush()
        except TimeoutError:
            self.log.warning("agent.drain_timeout", queued=self.publisher.queued)
        apply.cancel()
        pub.cancel()
        for t in writers:
            t.cancel()
        self.log.info("agent.stopped", revision=self.core.state.revision)

    async def _persist_final(self) -> None:
        """The state once more at stop; a failed write is logged (the log has it all: a restart
        replays from the older file) and the drain goes on."""
        revision = self.core.state.revision
        try:
            await self.store.save(self.settings.node, self.core.state, self.core.applied_digest)
        except OSError as e:
            self.log.exception("agent.persist_failed", revision=revision, error=str(e))
            return
        self.core.persisted(revision, time.monotonic())
        self._status_changed()

    # -- subscriber ----------------------------------------------------------------------------

    async def _subscribe_loop(self) -> None:
        from_rev = self.core.state.revision + 1
        # The log's hash chain, checked as it is replayed: from the cluster's genesis on a fresh
        # start; after a restart from the first event's own hash, then link by link.
        chain = ChainFollower(
            genesis(self.settings.cluster) if from_rev == 1 else None,
            revision=from_rev - 1,
            on_break=self._chain_broken,
        )
        backoff = COORDINATOR_RETRY.start()
        verify = from_rev > 1
        while True:
            try:
                if verify:
                    from_rev = await self._verify_not_ahead(from_rev)
                    verify = False
                async with self.client.subscribe(
                    from_rev, follow=True, snapshot_if_compacted=True, chain=chain
                ) as sub:
                    async for item in sub:
                        backoff.reset()
                        if not self.inbox.offer(item, sub.head_revision):
                            from_rev = await self._resync()
                            break
                        from_rev = sub.last_revision + 1
            except CoordinatorUnavailable as e:
                # every coordinator was lost: the log may come back restored from a backup
                verify = from_rev > 1
                delay = backoff.next_delay()
                self.log.warning(
                    "agent.subscribe_failed", error=str(e), from_revision=from_rev, retry_in=round(delay, 3)
                )
                await asyncio.sleep(delay)

    async def _verify_not_ahead(self, from_rev: int) -> int:
        """Where to follow the log from: ``from_rev``, unless the log's head is below what the
        agent already holds (``from_rev - 1``); then the agent rebases on the log's state and
        follows from after it. Raises CoordinatorUnavailable (the caller retries)."""
        view = await self.client.get_state()
        if view.head_revision >= from_rev - 1:
            return from_rev
        self._request_rebase(from_rev - 1, view)
        return view.revision + 1

    def _request_rebase(self, held: int, view: StateView) -> None:
        self.log.error(
            "agent.stored_revision_ahead_of_log",
            stored_revision=held,
            log_head=view.head_revision,
            error=f"this agent holds revision {held} but the log ends at {view.head_revision} (etcd "
            "restored from an older backup?): discarding the stored state, rebuilding from the log",
        )
        self.inbox.reset(view.head_revision)
        self._rebase_to = Snapshot(view.revision, view.state, view.table_digest)
        self.inbox.wake()

    def _chain_broken(self, found: ChainBreak) -> None:
        """A link of the log does not hold: an entry changed behind the coordinators' back. The
        alarm goes into the log itself (``LogIntegrity``); the agent goes on applying."""
        self.chain_breaks += 1
        self.log.error("agent.log_chain_broken", revision=found.revision, detail=found.describe())

        def hex_or_empty(digest: bytes) -> str:
            return digest.hex() if len(digest) == HASH_BYTES else ""

        alarm = LogIntegrity(
            self.settings.node,
            found.revision,
            hex_or_empty(found.expected),
            hex_or_empty(found.found),
            found.describe()[:200],
        )
        self.publisher.submit(alarm, reason="the log's hash chain does not hold")

    async def _resync(self) -> int:
        """Inbox overflow: drop the backlog and jump to the coordinator's state (a snapshot item)."""
        dropped = self.inbox.clear()
        self.resyncs += 1
        try:
            view = await self.client.get_state()
        except CoordinatorUnavailable as e:
            # Nothing dropped reached the core: follow the log again from what it folded.
            rev = self.core.state.revision + 1
            self.log.warning("agent.resync_fallback", error=str(e), dropped=dropped, from_revision=rev)
            return rev
        if view.head_revision < self.core.state.revision:
            self._request_rebase(self.core.state.revision, view)
            return view.revision + 1
        self.inbox.offer(Snapshot(view.revision, view.state, view.table_digest), view.head_revision)
        self.log.warning("agent.resync", dropped=dropped, revision=view.revision)
        return view.revision + 1

    # -- apply loop ----------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        """Drain, fold, decide, execute. While the log is ahead and a cycle is expensive (a big
        table), the loop first yields as long as its last cycle took, so the subscriber (on the
        same event loop) can fill the inbox: one cycle then folds a large batch instead of the one
        event that arrived meanwhile, so catching up with a big table goes at the subscription's
        pace, not at one expensive cycle per event."""
        core = self.core
        cost = 0.0
        while True:
            if cost > 0.005 and not self._stopping and not self.inbox.caught_up(core.state.revision):
                await asyncio.sleep(min(0.25, cost))
            began = time.monotonic()
            if self._rebase_to is not None:
                core = await self._rebase()
            items = self.inbox.drain()
            for item in items:
                if isinstance(item, Snapshot):
                    self.log.info("agent.snapshot", revision=item.revision, table_digest=item.table_digest)
                    self._freeze_due = True
                elif isinstance(item.payload, ConfigApplied):
                    self._freeze_due = True
                core.step(item)
            if core.state.config_revision != self.commands.config_revision:
                await self._decide_commands(core.state)
            if items and self.checker is not None:
                self.checker.on_state(core.state)
            if core.full_render_due():
                # a new configuration or snapshot: the whole table, rendered in a thread (O(table),
                # far longer than an event) while the loop runs on
                core.adopt(await asyncio.to_thread(render_full, core.state))
            now = time.monotonic()
            ready = core.ready(now, caught_up=self.inbox.caught_up(core.state.revision))
            if ready is not None:
                await self._execute(ready, now)
                if self._freeze_due and ready.desired is not None:
                    self._freeze_heap()
                cost = time.monotonic() - began
                continue
            cost = 0.0
            if self._stopping:
                return
            deadline = core.next_deadline()
            await self.inbox.wait(None if deadline is None else max(0.0, deadline - now))

    async def _rebase(self) -> ApplyCore:
        """Replace the folded state by the log's (the subscriber found the log behind the agent):
        a new core from the coordinator's snapshot, written at once over the stored state; the
        dataplane is then reconciled to its table as at start (nothing is known applied)."""
        snap, self._rebase_to = self._rebase_to, None
        assert snap is not None
        await self.persister.idle()  # no write of the discarded state lands after ours
        core = self.core = ApplyCore(self.settings.node, policy=self.settings.policy)
        core.step(snap)
        self.rebases += 1
        self._freeze_due = True
        try:
            await self.store.save(self.settings.node, core.state, "")
            core.persisted(core.state.revision, time.monotonic())
        except OSError as e:
            self.log.exception("agent.persist_failed", revision=core.state.revision, error=str(e))
        if self.checker is not None:
            self.checker.on_state(core.state)
        self.log.warning("agent.rebased", revision=core.state.revision, table_digest=snap.table_digest)
        return core

    async def _decide_commands(self, state: State) -> None:
        """A new configuration is in force: refresh this director's own file, decide each command
        the configuration names, record every refusal (once per command and revision)."""
        path = self.settings.config_path
        if path is not None:
            try:
                loaded = await asyncio.to_thread(_read_if_changed, path, self._own_digest)
            except (OSError, ConfigSourceError) as e:
                self.log.warning("agent.own_config_unreadable", path=str(path), error=str(e))
                loaded = None
            if loaded is not None:
                self._own_digest = loaded.digest
                self.commands.set_own(loaded.config, str(path))
        for refused in self.commands.on_config(state.config, state.config_revision):
            self.log.error(
                "agent.command_refused",
                kind=refused.kind,
                command=refused.command,
                virtuals=list(refused.virtuals),
                reason=refused.reason,
                config_revision=refused.config_revision,
            )
            self.publisher.submit(refused, reason="not allowed by this director's local command policy")

    def _freeze_heap(self) -> None:
        """Take what is alive now -- the state, the rendered and applied tables of a new
        configuration: hundreds of thousands of objects at 1,000 x 4, millions at 10,000 -- out of
        the cyclic garbage collector's sight (``gc.freeze``). Each full collection would walk all
        of it on this loop, in the middle of whatever event is being applied; they are
        immutable, acyclic values, freed by reference counting when replaced, so nothing is lost
        but the walk. Called once the table of a new configuration or snapshot is applied (and
        after loading the stored state), after one full collection (its cost, once per
        configuration, on top of applying the whole table)."""
        self._freeze_due = False
        gc.collect()  # what is garbage now is not frozen with the rest (it would never be freed)
        gc.freeze()
        self.log.debug("agent.heap_frozen", objects=gc.get_freeze_count())

    async def _execute(self, ready: Ready, now: float) -> None:
        core = self.core
        log = self.log.bind(revision=ready.revision)
        actual_digest: str | None = None
        if ready.desired is not None:
            try:
                ops, actual, actual_digest = await self._reconcile(ready)
            except DataplaneError as e:
                log.exception("agent.reconcile_failed", error=str(e))
                core.reconcile_failed(ready, now)
                return
            if actual_digest != ready.desired_digest:
                log.error("agent.verify_failed", want=ready.desired_digest, have=actual_digest)
            elif ops:
                log.info("agent.reconciled", ops=len(ops), digest=actual_digest)
            if ready.changed is not None and actual is ready.desired:
                # The per-event path: only these services changed, so only their fallback can
                # have; looking at the whole table would cost O(table) per event on the loop.
                changed = tuple(s for s in ready.changed.values() if s is not None)
                self.fallbacks.on_applied(ready.state, Table(changed))
            else:
                self.fallbacks.on_applied(ready.state, actual)
        if ready.persist:  # in the background: the next event does not wait for the file
            core.persist_started()
            self.persister.offer((ready.revision, ready.state, ready.desired_digest))
        verified = ready.desired is None or actual_digest == ready.desired_digest
        publish = ready.publish is not None and verified
        if ready.publish is not None and publish:
            ev = self.publisher.submit(ready.publish, reason="table applied")
            log.info(
                "agent.table_applied",
                digest=ready.publish.digest,
                event_id=ev.event_id if ev is not None else "",
                queued=ev is not None,
            )
        core.advance(
            Ready(ready.revision, ready.state, ready.desired, ready.desired_digest, False, ready.publish),
            now,
            actual_digest=actual_digest,
            published=publish,
        )
        if ready.desired is not None:
            self._status_changed()

    async def _persist(self, job: tuple[int, State, str]) -> None:
        """The persister's write: the state at ``revision``; the core learns the outcome."""
        revision, state, digest = job
        began = time.monotonic()
        done = False
        try:
            await self.store.save(self.settings.node, state, digest)
            done = True
        except OSError as e:
            self.log.exception("agent.persist_failed", revision=revision, error=str(e))
        finally:
            now = time.monotonic()
            if done:
                self.core.persist_took(now - began)
                self.core.persisted(revision, now)
                self._status_changed()
            else:  # failed, or cancelled at shutdown: the core may ask again
                self.core.persist_failed(now)
            self.inbox.wake()  # the apply loop re-decides (the next write may be due)

    async def _reconcile(self, ready: Ready) -> tuple[list[Op], Table, str]:
        """The dataplane to ``ready.desired``: on the per-event path only the services that
        changed (the rest is in place), else the whole table. Returns the operations, the
        table the dataplane holds and its digest."""
        assert ready.desired is not None
        async with self._dataplane_lock:
            if ready.changed is not None:
                ops, ok = await reconcile_changed(self.dataplane, ready.changed)
                if ok:
                    return ops, ready.desired, ready.desired_digest  # the digest after the ack
                self.log.warning("agent.partial_verify_failed", services=sorted(ready.changed))
            ops, actual = await reconcile(self.dataplane, ready.desired)
        digest = actual.digest() if ops or actual != ready.desired else ready.desired_digest
        return ops, actual, digest

    def _status_changed(self) -> None:
        """``status.json`` is out of date: the status writer writes the record as of now."""
        core = self.core
        self._status.offer(
            {
                "node": self.settings.node,
                "pid": os.getpid(),
                "revision": core.state.revision,
                "applied_revision": core.applied_revision,
                "digest": core.applied_digest,
                "persisted_revision": core.persisted_revision,
                "start_revision": core.start_revision,
                "events_folded": core.events_folded,
                "snapshots_loaded": core.snapshots_loaded,
                "resyncs": self.resyncs,
                "checker": self.checker.status() if self.checker is not None else None,
                "time": time.time(),
            }
        )

    async def _write_status(self, record: dict[str, object]) -> None:
        try:
            await self.store.write_status(record)
        except OSError as e:
            self.log.warning("agent.status_write_failed", error=str(e))

    # -- publishing ----------------------------------------------------------------------------

    async def _report(self) -> None:
        """Every ``report_interval`` s, ``TableApplied`` with the revision and digest held, so
        that ``lvs-events status`` sees this node alive on a quiet log (and a silent one)."""
        while True:
            await asyncio.sleep(self.settings.report_interval)
            if self.core.applied_digest:
                payload = TableApplied(self.settings.node, self.core.holds_revision, self.core.applied_digest)
                self.publisher.submit(payload, reason="report")

    def _on_outbox_overflow(self) -> None:
        if self.checker is not None:
            self.checker.resync()
        self.inbox.wake()  # the core re-decides TableApplied by itself (republish_after)

    async def _publish_config(self, loaded: LoadedConfig) -> None:
        """Publish ``ConfigApplied`` if the config in force differs from ours (once, at start).

        Only over a config this node published itself from its file (or over none): a config
        applied since by an operator or another director is not replaced by this file, which
        may well be older; the refusal is recorded (``ConfigRejected``). The event names the
        config it replaces (``replaces_revision``): if another one lands first, the log keeps
        that one."""
        backoff = COORDINATOR_RETRY.start()
        while True:
            try:
                view = await self.client.get_state()
                in_force = view.state.config_revision
                if same_config(view.state.config, loaded.config):
                    self.log.info("agent.config_in_force", revision=in_force)
                    return
                if view.state.config is not None and not await self._published_here(in_force):
                    error = (
                        f"{loaded.config.source} not published at start: the config in force (revision "
                        f"{in_force}) was not published from this node's file; apply the file with "
                        "lvs-events config apply if it is the one wanted"
                    )
                    self.log.warning("agent.config_not_published", revision=in_force)
                    self.publisher.submit(
                        ConfigRejected(loaded.config.source or "config", error, loaded.digest),
                        reason="config at start",
                    )
                    return
                ev = self.publisher.event(
                    ConfigApplied(loaded.config, loaded.digest, in_force),
                    reason=f"config {loaded.config.source}",
                )
                (ack,) = await self.client.publish([ev])
            except CoordinatorUnavailable as e:
                delay = backoff.next_delay()
                self.log.warning("agent.config_publish_retry", error=str(e), retry_in=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            if ack.ok:
                self.log.info("agent.config_published", event_id=ev.event_id, revision=ack.revision)
            else:
                self.log.error(
                    "agent.config_refused", event_id=ev.event_id, code=ack.error_code, error=ack.error
                )
            return

    async def _published_here(self, revision: int) -> bool:
        """Whether the event at ``revision`` was published by this node's agent."""
        async with self.client.subscribe(revision) as sub:
            async for item in sub:
                return (
                    isinstance(item, Event)
                    and item.revision == revision
                    and item.origin == self.settings.node
                    and item.actor == self.publisher.actor
                )
        return False


def _read_if_changed(path: Path, digest: str) -> LoadedConfig | None:
    """This director's config file, parsed, when its content's digest is not ``digest`` (None:
    unchanged). Blocking (a read, a parse, name resolution): call in a thread."""
    if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
        return None
    return load_ldirectord(path)


class _Fenced:
    """The publisher as the health checker sees it, with the active's term on every verdict:
    verdicts of an active that lost its term are refused by the coordinator (fencing), those of
    a standby go in unfenced (term 0) as that node's own view."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.node = agent.publisher.node

    def submit(self, payload: Payload, reason: str = "", term: int = 0) -> Event | None:
        ha = self.agent.ha
        return self.agent.publisher.submit(payload, reason, term or (ha.active_term() if ha else 0))
