"""The :class:`Checker`: every real server of every virtual service, checked on time.

One scheduler, not one sleeping task per server: targets sit in a heap keyed by their next due
time; a single timer callback (armed for the earliest due time, rounded up to a ``tick``) starts
every probe due within that tick as a task, up to ``max_concurrency`` in flight. A finished probe
updates its target's verdict and pushes the target back into the heap, so an idle server costs
one heap entry, and the loop wakes about ``1 / tick`` times a second at most.

Timing, per target:

* the first check of a new target is spread uniformly over its ``checkinterval`` (jitter: a new
  config with 10,000 servers does not fire 10,000 connects at once);
* then fixed-rate: due = previous due + ``checkinterval`` (the phase is kept, so a stall of the
  loop does not bunch the checks together); when a check outlasts the interval the next one
  starts as soon as it ends;
* each probe is bounded by its timeout (see :mod:`lvs_events.agent.checks.probes`) and is cancelled there.
  The timeout counts the time the server had to answer: time the checker itself could not run
  (loop lag, a thread holding the GIL, a collector pause; :class:`~lvs_events.agent.checks.admission.LoopLag`)
  extends it; a check that takes ``CAP_FACTOR`` times its timeout without the server having had it
  is *inconclusive* and changes no verdict (nor does a check that failed for lack of the checker's
  own resources: file descriptors, buffers, source ports).

Admission (:class:`~lvs_events.agent.checks.admission.Admission`): every ``control_period`` the
checker compares how much its loop stalled and how many checks it finished with what the
configuration asks; when it cannot keep up it starts checks at the rate it can finish, oldest due
first, and stretches every interval by demand / rate (``check.behind`` in the log, ``status()``,
and a ``CheckerHealth`` event on each transition of its degraded / behind flags).

Mass DOWN guard: within one (effective) interval, a node takes at most ``mass_down_threshold`` of a
virtual service's real servers (at least one) down on its own; a DOWN beyond that is held (the
server stays up, ``check.down_held``) until another node's view, from a checker that is not
degraded, confirms it, or the window has room again.

Verdicts, as ldirectord's ``_service_up`` / ``_service_down``:

* a success makes the server up and resets the failure count;
* a failure of an up server counts; it goes down at ``failurecount`` consecutive failures
  (the ones before are "soft failures", logged);
* the first verdict of a never-seen server is reported at once (a server is down until its first
  good check), and the log's earlier view by this node seeds the verdict on restart.

Only transitions are reported. A report the reporter refused (``False``) is retried on the next
ticks; :meth:`Checker.resync` reports every known verdict again.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import errno
import heapq
import itertools
import os
import random
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from lvs_events.agent.checks.admission import (
    CAP_FACTOR,
    Admission,
    CheckerLate,
    LoopLag,
    ServerTimeout,
    acquire_lag,
    release_lag,
)
from lvs_events.agent.checks.base import Down, Result, sockaddr
from lvs_events.agent.checks.probes import Probe, plan
from lvs_events.agent.checks.spec import CheckSpec, specs_from_config
from lvs_events.agent.commands import NO_CONSENT, CommandConsent
from lvs_events.agent.health import HealthReporter
from lvs_events.domain.config import Config, Protocol
from lvs_events.domain.events import CheckerHealth
from lvs_events.domain.state import RealKey, State, checker_degraded

__all__ = ["Checker", "CheckerStats"]

log = structlog.get_logger("lvs_events.agent.checks")

_NEVER: Final = 1 << 30  # "negotiate next" for a combined check
_RETRY: Final = 1.0  # seconds between retries of refused reports when nothing else is due
_DEGRADED_PERIODS: Final = 3  # control periods an inconclusive check keeps the checker degraded
#: errno values of a failed check that tell about the checker's host, not about the server
_OWN_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL, errno.EAGAIN}
)


@dataclass(slots=True, eq=False)
class _Target:
    spec: CheckSpec
    due: float = 0.0
    gen: int = 0
    verdict: bool | None = None
    reported: bool | None = None
    failures: int = 0
    since_negotiate: int = _NEVER
    detail: str = ""
    latency_ms: float = 0.0
    task: asyncio.Task[None] | _Connect | None = None
    removed: bool = False
    checks: int = 0
    addr: tuple[socket.AddressFamily, tuple[str, int]] = (socket.AF_INET, ("", 0))
    addr_of: CheckSpec | None = None  # the spec ``addr`` was computed for
    held: bool = False  # a DOWN verdict held back by the mass DOWN guard


@dataclass(slots=True)
class CheckerStats:
    """Counters for ``status`` and the benchmark."""

    started: int = 0
    finished: int = 0
    timeouts: int = 0
    reports: int = 0
    refused: int = 0
    late_starts: int = 0  # started more than one tick after their due time
    inconclusive: int = 0  # checks that said nothing about the server (the checker was late)
    held: int = 0  # DOWN verdicts held back by the mass DOWN guard
    lateness: list[float] = field(default_factory=list)  # sampled when ``sample_lateness``


class Checker:
    """Implements :class:`lvs_events.agent.health.HealthChecker` for every ldirectord check type.

    ``node`` is this director's name (its earlier view in the log seeds the verdicts).
    ``probe`` replaces every probe (tests); ``rng`` makes the jitter reproducible; ``on_check``
    sees every finished check ``(spec, result, started, ended)`` (the benchmark's probe point);
    ``commands`` decides whether an external check's command may run (default: never).
    ``capacity`` fixes the checks a second admitted (default: measured, see the module docstring);
    ``mass_down_threshold`` is the share of a virtual service's real servers this node may take
    down within one interval without another node's confirmation (1 turns the guard off);
    ``on_health`` is called after each transition of the checker's own health (the status file).
    ``clock`` must be the event loop's clock (loop-time values are compared with it).
    """

    def __init__(
        self,
        node: str,
        *,
        max_concurrency: int = 1000,
        tick: float = 0.005,
        probe: Probe | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_check: Callable[[CheckSpec, Result, float, float], None] | None = None,
        commands: CommandConsent = NO_CONSENT,
        capacity: float | None = None,
        mass_down_threshold: float = 0.5,
        control_period: float = 1.0,
        on_health: Callable[[], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if not 0.0 < mass_down_threshold <= 1.0:
            raise ValueError("mass_down_threshold must be in (0, 1]")
        if control_period <= 0:
            raise ValueError("control_period must be positive")
        self.node = node
        self.max_concurrency = max_concurrency
        self.tick = tick
        self.stats = CheckerStats()
        self._probe = probe
        self._rng = rng or random.Random()
        self._clock = clock
        self._on_check = on_check
        self._commands = commands
        self._config: Config | None = None
        self._targets: dict[RealKey, _Target] = {}
        self._heap: list[tuple[float, int, _Target, int]] = []
        self._seq = itertools.count()
        self._dirty: dict[RealKey, _Target] = {}
        self._inflight = 0
        self._reporter: HealthReporter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._kicked = False
        self._connector: _Connector | None = None
        self._maintenance: dict[RealKey, str] = {}  # servers forced down by a maintenancedir file
        self.admission = Admission(capacity=capacity)
        self.mass_down_threshold = mass_down_threshold
        self.control_period = control_period
        self._on_health = on_health
        self._state: State | None = None  # the latest folded state (other nodes' views)
        self._sizes: collections.Counter[str] = collections.Counter()  # probed reals per virtual
        self._downs: dict[str, collections.deque[float]] = {}  # unconfirmed DOWNs per virtual
        self._lag: LoopLag | None = None
        self._control: asyncio.TimerHandle | None = None
        self._period_at = 0.0
        self._period_stalled = 0.0
        self._period_finished = 0
        self._period_inconclusive = 0
        self._inconclusive_periods = 0  # control periods left during which the checker is degraded
        self._published: CheckerHealth | None = None  # the last CheckerHealth the log has of us
        self._logged_degraded: bool | None = None  # from the log at start (None: nothing said)
        self._longest_interval = 0.0

    # -- HealthChecker -------------------------------------------------------------------------

    def on_state(self, state: State) -> None:
        self._state = state
        if self._logged_degraded is None and self._published is None:
            own = state.checkers.get(self.node) if state.checkers else None
            if own is not None:
                self._logged_degraded = own.degraded
        if state.config is self._config and self._targets:
            return
        self._config = state.config
        specs = specs_from_config(state.config)
        now = self._clock()
        for key in [k for k in self._targets if k not in specs]:
            self._drop(self._targets.pop(key))
        for key, spec in specs.items():
            t = self._targets.get(key)
            if t is None:
                t = _Target(spec)
                views = state.health.get(key)
                logged = views.get(self.node) if views is not None else None
                if logged is not None:
                    t.verdict = t.reported = logged.up
                self._targets[key] = t
                self._place(t, now)
            elif t.spec != spec:
                changed_type = t.spec.checktype != spec.checktype
                self._cancel(t)
                t.spec = spec
                t.gen += 1
                t.since_negotiate = _NEVER
                if changed_type:
                    t.failures = 0
                self._place(t, now)
        self._demand()
        self._kick()

    def _demand(self) -> None:
        """The checks a second the configuration asks for, and the probed reals per service."""
        demand = 0.0
        longest = 0.0
        sizes: collections.Counter[str] = collections.Counter()
        for t in self._targets.values():
            spec = t.spec
            if spec.checktype in ("on", "off"):
                continue
            sizes[spec.virtual] += 1
            demand += 1.0 / max(spec.checkinterval, 1e-3)
            longest = max(longest, spec.checkinterval)
        self._sizes = sizes
        self._longest_interval = longest
        self.admission.demand = demand

    def set_maintenance(self, files: dict[RealKey, str]) -> None:
        """Servers with a file in ``maintenancedir`` (key -> file name): forced down at once,
        whatever their checks say, as ldirectord does; checks decide again once the file is gone."""
        entering = [k for k in files if k not in self._maintenance]
        self._maintenance = dict(files)
        for key in entering:
            t = self._targets.get(key)
            if t is not None:
                self._set(t, False, f"server in maintenance: file {files[key]}", 0.0)

    def resync(self) -> None:
        for key, t in self._targets.items():
            if t.verdict is not None:
                t.reported = None
                self._dirty[key] = t
        self._kick()

    async def run(self, reporter: HealthReporter) -> None:
        self._reporter = reporter
        self._loop = asyncio.get_running_loop()
        self._kicked = False
        self._connector = _Connector(self, self._loop) if self._probe is None else None
        self._lag = acquire_lag(self._loop)
        self._period_at = self._loop.time()
        self._period_stalled = self._lag.stalled(self._period_at)
        self._control = self._loop.call_later(self.control_period, self._on_control)
        self._kick()
        try:
            await self._loop.create_future()
        finally:
            if self._control is not None:
                self._control.cancel()
                self._control = None
            release_lag(self._lag)
            self._lag = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = float("inf")
            tasks = []
            for target in self._targets.values():
                if target.task is not None:
                    target.task.cancel()
                    if isinstance(target.task, asyncio.Task):
                        tasks.append(target.task)
            if self._connector is not None:
                self._connector.close()
                self._connector = None
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._loop = None
            self._reporter = None

    # -- introspection -------------------------------------------------------------------------

    def verdicts(self) -> dict[RealKey, bool | None]:
        return {k: t.verdict for k, t in self._targets.items()}

    def detail(self, key: RealKey) -> str:
        return self._targets[key].detail

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def degraded(self) -> bool:
        """Behind schedule, or inconclusive checks in the last few control periods."""
        return self.admission.behind or self._inconclusive_periods > 0

    def health(self) -> CheckerHealth:
        """This checker's health as the ``CheckerHealth`` event says it."""
        adm = self.admission
        stretch = adm.stretch
        reasons = []
        if adm.behind:
            reasons.append(f"behind: {adm.demand:.0f} checks/s asked, {adm.capacity:.0f}/s admitted")
        if self._inconclusive_periods > 0:
            reasons.append("inconclusive checks: the checker was too late to tell")
        return CheckerHealth(
            node=self.node,
            degraded=self.degraded,
            behind=adm.behind,
            stretch=round(stretch, 3),
            effective_interval=round(self._longest_interval * stretch, 3),
            capacity=round(adm.capacity, 1),
            demand=round(adm.demand, 1),
            inconclusive=self.stats.inconclusive,
            detail="; ".join(reasons),
        )

    def status(self) -> dict[str, object]:
        """For the agent's status file."""
        h = self.health()
        st = self.stats
        return {
            "degraded": h.degraded,
            "behind": h.behind,
            "stretch": h.stretch,
            "effective_interval": h.effective_interval,
            "capacity": h.capacity,
            "demand": h.demand,
            "checks_started": st.started,
            "checks_finished": st.finished,
            "timeouts": st.timeouts,
            "inconclusive": st.inconclusive,
            "downs_held": st.held,
            "late_starts": st.late_starts,
            "inflight": self._inflight,
            "mass_down_threshold": self.mass_down_threshold,
        }

    # -- the checker's own health --------------------------------------------------------------

    def _on_control(self) -> None:
        """Every ``control_period``: admission from what the period showed, then the checker's
        health, published on a transition (and once at start when the log says otherwise)."""
        loop, lag = self._loop, self._lag
        if loop is None or lag is None:
            return
        now = loop.time()
        stalled = lag.stalled(now)
        adm = self.admission
        was_behind, was_degraded = adm.behind, self.degraded
        adm.observe(
            now - self._period_at,
            stalled - self._period_stalled,
            self._period_finished,
            self._period_inconclusive,
        )
        if self._period_inconclusive:
            self._inconclusive_periods = _DEGRADED_PERIODS
        elif self._inconclusive_periods > 0:
            self._inconclusive_periods -= 1
        self._period_at, self._period_stalled = now, stalled
        self._period_finished = self._period_inconclusive = 0
        if adm.behind != was_behind or self.degraded != was_degraded:
            h = self.health()
            log.warning(
                "check.behind" if h.behind else ("check.degraded" if h.degraded else "check.caught_up"),
                node=self.node,
                degraded=h.degraded,
                behind=h.behind,
                stretch=h.stretch,
                effective_interval=h.effective_interval,
                capacity=h.capacity,
                demand=h.demand,
                inconclusive=h.inconclusive,
            )
            if self._on_health is not None:
                self._on_health()
        self._publish_health()
        self._control = loop.call_later(self.control_period, self._on_control)
        if adm.rate is not None or was_behind:
            self._kick()  # a new rate: re-arm for the next token

    def _publish_health(self) -> None:
        """Publish ``CheckerHealth`` when its flags differ from what the log has of this node."""
        reporter = self._reporter
        if reporter is None:
            return
        degraded, behind = self.degraded, self.admission.behind
        last = self._published
        if last is None:
            if self._logged_degraded is None and not degraded:
                return  # the log has nothing and there is nothing to say
            if self._logged_degraded is not None and self._logged_degraded == degraded and not behind:
                return
        elif last.degraded == degraded and last.behind == behind:
            return
        h = self.health()
        if reporter.report_checker(h):
            self._published = h

    # -- placement -----------------------------------------------------------------------------

    def _place(self, t: _Target, now: float) -> None:
        ct = t.spec.checktype
        if ct in ("on", "off"):
            self._set(t, ct == "on", f"checktype={ct}", 0.0)
            return
        # first check of a (new or changed) target: anywhere within one interval
        t.due = now + self._rng.uniform(0.0, t.spec.checkinterval)
        self._push(t)

    def _push(self, t: _Target) -> None:
        heapq.heappush(self._heap, (t.due, next(self._seq), t, t.gen))

    def _cancel(self, t: _Target) -> None:
        if t.task is not None:
            t.task.cancel()
            t.task = None

    def _drop(self, t: _Target) -> None:
        t.removed = True
        t.gen += 1
        self._cancel(t)
        self._dirty.pop(t.spec.key, None)

    # -- the timer -----------------------------------------------------------------------------

    def _kick(self) -> None:
        """Run a tick soon (config change, resync, a slot freed)."""
        loop = self._loop
        if loop is None or self._kicked:
            return
        self._kicked = True
        loop.call_soon(self._on_kick)

    def _on_kick(self) -> None:
        self._kicked = False
        self._tick()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._tick()

    def _tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = self._clock()
        horizon = now + self.tick
        heap = self._heap
        stats = self.stats
        connector = self._connector
        if connector is not None and connector.queues:
            connector.expire(now)
        late = now - self.tick * 2
        limit = self.max_concurrency
        heappop = heapq.heappop
        admission = self.admission
        while heap and heap[0][0] <= horizon and self._inflight < limit:
            due, _, t, gen = heap[0]
            if gen != t.gen or t.removed or t.task is not None:
                heappop(heap)
                continue
            if not admission.take(now):
                break  # over capacity: the oldest due stay first in line
            heappop(heap)
            if due < late:
                stats.late_starts += 1
            self._start(loop, t, now)
        if self._dirty:
            self._flush()
        self._arm(loop, now)

    def _arm(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        at = float("inf")
        if self._heap and self._inflight < self.max_concurrency:  # else a finishing probe kicks
            at = self._heap[0][0]
            if at <= now + self.tick:
                at = max(at, self.admission.next_token(now))
        if self._connector is not None and self._connector.queues:
            at = min(at, self._connector.next_deadline())
        if self._dirty:
            at = min(at, now + _RETRY)
        if at == float("inf"):
            return
        # round up to the tick so that nearby due times share one wake-up
        at = max(at, now)
        if self._timer is not None:
            if self._timer_at <= at + self.tick:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(at - now + self.tick * 0.5, self._on_timer)

    # -- probes --------------------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop, t: _Target, now: float) -> None:
        self._inflight += 1
        self.stats.started += 1
        spec = t.spec
        connector = self._connector
        if (
            connector is not None
            and spec.protocol is not Protocol.UDP
            and (
                spec.checktype == "connect"
                or (spec.checktype == "combined" and t.since_negotiate < spec.connects)
            )
        ):
            t.task = connector.start(t, now)
        else:
            t.task = loop.create_task(self._check(t, t.gen))

    async def check_once(self, spec: CheckSpec, negotiate: bool) -> Result:
        """Run one probe within its timeout; every failure becomes a down :class:`Result`."""
        try:
            probe, timeout, kind = plan(spec, negotiate, self._commands)
            if self._probe is not None:
                probe = self._probe
            try:
                async with ServerTimeout(timeout):
                    result = await probe(spec)
            except TimeoutError as e:
                late = isinstance(e, CheckerLate)  # no verdict: the checker could not run
                if not late:
                    self.stats.timeouts += 1
                detail = f"{kind}: {e}" if late else f"{kind}: timeout after {timeout:g}s"
                return Result(False, detail, inconclusive=late)
            except Down as e:
                return Result(False, f"{kind}: {e}")
            except (OSError, ValueError, EOFError, asyncio.IncompleteReadError) as e:
                text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                detail = f"{kind}: {type(e).__name__}: {text}" if text else f"{kind}: {e!r}"
                return Result(False, detail, inconclusive=isinstance(e, OSError) and e.errno in _OWN_ERRNOS)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a probe bug must not kill the scheduler
            log.exception("check.error", virtual=spec.virtual, real=spec.real)
            return Result(False, f"check error: {type(e).__name__}: {e}")
        if spec.checktype == "combined":
            return Result(result.up, f"{kind}: {result.detail}")
        return result

    async def _check(self, t: _Target, gen: int) -> None:
        spec = t.spec
        negotiate = spec.checktype == "combined" and t.since_negotiate >= spec.connects
        started = self._clock()
        try:
            result = await self.check_once(spec, negotiate)
        finally:
            self._release(t, asyncio.current_task())
        self._finish(t, gen, negotiate, result, started)

    def _release(self, t: _Target, task: object) -> None:
        self._inflight -= 1
        if t.task is task:
            t.task = None
        if self._inflight == self.max_concurrency - 1:
            self._kick()

    def _finish(self, t: _Target, gen: int, negotiate: bool, result: Result, started: float) -> None:
        self.stats.finished += 1
        if gen != t.gen or t.removed:
            return
        spec = t.spec
        end = self._clock()
        self._period_finished += 1
        if result.inconclusive:
            self.stats.inconclusive += 1
            self._period_inconclusive += 1
            log.debug("check.inconclusive", virtual=spec.virtual, real=spec.real, detail=result.detail)
        elif spec.checktype == "combined":
            if negotiate:
                t.since_negotiate = 0 if result.up else _NEVER
            else:
                t.since_negotiate = t.since_negotiate + 1 if result.up else _NEVER
        t.checks += 1
        if self._on_check is not None:
            self._on_check(spec, result, started, end)
        in_maintenance = self._maintenance.get(spec.key) if self._maintenance else None
        if in_maintenance is not None:
            self._set(t, False, f"server in maintenance: file {in_maintenance}", 0.0)
        elif not result.inconclusive:
            self._verdict(t, result, (end - started) * 1000.0)
        # fixed rate, keeping the phase; after an overrun, as soon as possible. Over capacity the
        # admission starts the due checks oldest first at the rate it can finish: due times fall
        # behind and the interval stretches by demand / rate, whatever the rate does next
        interval = spec.checkinterval
        nxt = t.due + interval
        if nxt < end:
            nxt = end if end - nxt < interval else end + self._rng.uniform(0.0, self.tick)
        t.due = nxt
        self._push(t)
        loop = self._loop
        if loop is not None and (self._timer is None or nxt < self._timer_at):
            self._arm(loop, end)

    # -- verdicts ------------------------------------------------------------------------------

    def _verdict(self, t: _Target, result: Result, latency_ms: float) -> None:
        if result.up:
            t.failures = 0
            if t.held:
                t.held = False
                log.info(
                    "check.down_released", virtual=t.spec.virtual, real=t.spec.real, detail=result.detail
                )
            self._set(t, True, result.detail, latency_ms)
            return
        if t.verdict is True:
            t.failures += 1
            if t.failures < t.spec.failurecount:
                log.info(
                    "check.soft_failure",
                    virtual=t.spec.virtual,
                    real=t.spec.real,
                    failure=t.failures,
                    failurecount=t.spec.failurecount,
                    detail=result.detail,
                )
                t.detail, t.latency_ms = result.detail, latency_ms
                return
            if not self._may_take_down(t, result.detail):
                t.detail, t.latency_ms = result.detail, latency_ms
                return
        self._set(t, False, result.detail, latency_ms)

    def _may_take_down(self, t: _Target, detail: str) -> bool:
        """The mass DOWN guard, for an up server whose checks say down: yes when another node's
        view (from a checker not degraded) says down too, or when fewer than the threshold's share
        of its service went down on this node's word alone within the last (effective) interval."""
        spec = t.spec
        state = self._state
        if state is not None:
            views = state.health.get(spec.key)
            if views is not None and any(
                node != self.node and not obs.up and not checker_degraded(state, node)
                for node, obs in views.items()
            ):
                if t.held:
                    t.held = False
                    log.info("check.down_confirmed", virtual=spec.virtual, real=spec.real)
                return True
        if self.mass_down_threshold >= 1.0:
            return True
        now = self._clock()
        window = self.admission.effective(spec.checkinterval)
        downs = self._downs.get(spec.virtual)
        if downs is None:
            downs = self._downs[spec.virtual] = collections.deque()
        while downs and downs[0] <= now - window:
            downs.popleft()
        allowed = max(1, int(self.mass_down_threshold * self._sizes.get(spec.virtual, 1)))
        if len(downs) < allowed:
            downs.append(now)
            t.held = False
            return True
        self.stats.held += 1
        if not t.held:
            t.held = True
            log.warning(
                "check.down_held",
                virtual=spec.virtual,
                real=spec.real,
                downs_in_interval=len(downs),
                allowed=allowed,
                mass_down_threshold=self.mass_down_threshold,
                detail=detail,
            )
        return False

    def _set(self, t: _Target, up: bool, detail: str, latency_ms: float) -> None:
        if t.verdict is not up:
            spec = t.spec
            log.info(
                "check.transition",
                virtual=spec.virtual,
                real=spec.real,
                up=up,
                checktype=spec.label,
                detail=detail,
                latency_ms=round(latency_ms, 3),
            )
        t.verdict = up
        t.detail = detail
        t.latency_ms = latency_ms
        if t.reported is not up:
            self._report(t)

    def _report(self, t: _Target) -> None:
        reporter = self._reporter
        spec = t.spec
        if reporter is None or t.verdict is None:
            self._dirty[spec.key] = t
            return
        up = t.verdict
        ok = reporter.report(
            spec.virtual, spec.real, up, checktype=spec.label, detail=t.detail, latency_ms=t.latency_ms
        )
        if ok:
            self.stats.reports += 1
            t.reported = up
            self._dirty.pop(spec.key, None)
        else:
            self.stats.refused += 1
            self._dirty[spec.key] = t

    def _flush(self) -> None:
        for t in list(self._dirty.values()):
            if t.removed or t.verdict is None:
                self._dirty.pop(t.spec.key, None)
                continue
            if t.reported is t.verdict:
                self._dirty.pop(t.spec.key, None)
                continue
            self._report(t)
            if t.spec.key in self._dirty:
                break  # the reporter is refusing: try again later


_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_STREAM: Final = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_EPOLLOUT: Final = select.EPOLLOUT
_EPOLL_BAD: Final = select.EPOLLERR | select.EPOLLHUP
_SOL_SOCKET: Final = socket.SOL_SOCKET
_SO_ERROR: Final = socket.SO_ERROR
_SO_LINGER: Final = socket.SO_LINGER
_CONNECTED: Final = Result(True, "connected")
_CONNECTED_COMBINED: Final = Result(True, "connect: connected")


class _Connect:
    """One TCP connect check in flight: a non-blocking socket in the :class:`_Connector`'s epoll
    set. No task, no timer and no event-loop registration of its own."""

    __slots__ = ("connector", "deadline", "done", "gen", "sock", "stalled", "started", "target")

    def __init__(
        self,
        connector: _Connector,
        t: _Target,
        sock: _socket.socket | None,
        started: float,
        deadline: float,
        *,
        stalled: float = 0.0,
    ) -> None:
        self.connector = connector
        self.target = t
        self.gen = t.gen
        self.sock = sock
        self.started = started
        self.deadline = deadline  # in server time: started + timeout, extended by the loop's stalls
        self.stalled = stalled  # the loop's stalled seconds when it started
        self.done = False

    def cancel(self) -> None:
        self.connector.cancel(self)


class _Connector:
    """Every TCP connect check of a :class:`Checker` (the check that has to scale to 10,000
    servers a second). Same verdicts as :func:`lvs_events.agent.checks.simple.check_connect`, a fraction of
    the cost:

    * one ``epoll`` set of its own, read by one loop reader: the completions of a tick's connects
      are handled in one callback (one ``epoll_wait``), not one loop callback each;
    * a socket leaves the set by being closed (no ``epoll_ctl`` to remove it); a successful
      connect is known from ``EPOLLOUT`` alone (``SO_ERROR`` is read only on an error event);
    * no timer per check: checks with the same timeout expire in start order, from one FIFO per
      timeout value, on the scheduler's tick (so up to about a tick late); the timeout counts the
      server's time (the loop's stalls since a check started extend it, in the same order for
      every check of a FIFO), a check past ``CAP_FACTOR`` times its timeout is inconclusive;
    * the socket is a bare ``_socket.socket`` created non-blocking (no Python wrapper, no
      ``fcntl``/``ioctl``), the sockaddr is computed once per target.
    """

    def __init__(self, checker: Checker, loop: asyncio.AbstractEventLoop) -> None:
        self.checker = checker
        self.loop = loop
        self.epoll = select.epoll()
        self.pending: dict[int, _Connect] = {}
        self.queues: dict[float, collections.deque[_Connect]] = {}  # per timeout, deadline order
        loop.add_reader(self.epoll.fileno(), self._ready)

    def close(self) -> None:
        for c in list(self.pending.values()):
            self.cancel(c)
        self.queues.clear()
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    def start(self, t: _Target, now: float) -> _Connect:
        spec = t.spec
        if t.addr_of is not spec:
            t.addr = sockaddr(spec.address, spec.port)
            t.addr_of = spec
        family, addr = t.addr
        timeout = spec.checktimeout
        try:
            sock = _socket.socket(family, _STREAM)
        except OSError as e:  # EMFILE, ENOBUFS...: a failed check, not a scheduler crash
            c = _Connect(self, t, None, now, now)
            self.loop.call_soon(self._immediate, c, e.errno or errno.EIO)
            return c
        lag = self.checker._lag
        c = _Connect(self, t, sock, now, now + timeout, stalled=lag.stalled(now) if lag is not None else 0.0)
        err = sock.connect_ex(addr)
        if err == errno.EINPROGRESS:
            fd = sock.fileno()
            self.epoll.register(fd, _EPOLLOUT)
            self.pending[fd] = c
            q = self.queues.get(timeout)
            if q is None:
                q = self.queues[timeout] = collections.deque()
            q.append(c)
        else:
            self.loop.call_soon(self._immediate, c, err)
        return c

    def _ready(self) -> None:
        pending = self.pending
        for fd, ev in self.epoll.poll(0):
            c = pending.pop(fd, None)
            if c is None:
                continue
            sock = c.sock
            assert sock is not None
            err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR) if ev & _EPOLL_BAD else 0
            self._complete(c, sock, err)

    def _immediate(self, c: _Connect, err: int) -> None:
        if c.done:
            return  # cancelled meanwhile
        sock = c.sock
        if sock is None:
            self._end(c, _failure(err))
        else:
            self._complete(c, sock, err)

    def _complete(self, c: _Connect, sock: _socket.socket, err: int) -> None:
        if err == 0:
            # close with a reset: no TIME_WAIT on the director (see check_connect)
            sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _LINGER_RESET)
            result = _CONNECTED_COMBINED if c.target.spec.checktype == "combined" else _CONNECTED
        else:
            result = _failure(err)
        sock.close()  # also leaves the epoll set
        c.sock = None
        self._end(c, result)

    def _end(self, c: _Connect, result: Result) -> None:
        c.done = True
        checker = self.checker
        checker._release(c.target, c)
        checker._finish(c.target, c.gen, False, result, c.started)

    def _deadline(self, c: _Connect, timeout: float, stalled: float) -> float:
        """When ``c`` ends: its timeout in server time, or its wall-time cap, the earlier."""
        return min(c.deadline + (stalled - c.stalled), c.started + timeout * CAP_FACTOR)

    def expire(self, now: float) -> None:
        """End the checks whose deadline has passed: timed out when the server had its timeout,
        inconclusive when the checker could not run for most of it."""
        lag = self.checker._lag
        stalled = lag.stalled(now) if lag is not None else 0.0
        for timeout, q in self.queues.items():
            while q:
                c = q[0]
                if c.done:
                    q.popleft()
                    continue
                if self._deadline(c, timeout, stalled) > now:
                    break
                q.popleft()
                sock = c.sock
                assert sock is not None
                self.pending.pop(sock.fileno(), None)
                sock.close()
                c.sock = None
                granted = now - c.started - (stalled - c.stalled)
                if granted >= timeout:
                    self.checker.stats.timeouts += 1
                    self._end(c, Result(False, f"connect: timeout after {timeout:g}s"))
                else:
                    detail = (
                        f"connect: checker too late to tell: the server had {granted:.3g}s of {timeout:g}s"
                    )
                    self._end(c, Result(False, detail, inconclusive=True))

    def next_deadline(self) -> float:
        lag = self.checker._lag
        stalled = lag.stalled(self.loop.time()) if lag is not None else 0.0
        at = float("inf")
        for timeout, q in self.queues.items():
            while q and q[0].done:
                q.popleft()
            if q:
                at = min(at, self._deadline(q[0], timeout, stalled))
        return at

    def cancel(self, c: _Connect) -> None:
        if c.done:
            return
        c.done = True
        sock = c.sock
        if sock is not None:
            self.pending.pop(sock.fileno(), None)
            sock.close()
            c.sock = None
        self.checker._release(c.target, c)


def _failure(err: int) -> Result:
    name = errno.errorcode.get(err, str(err))
    return Result(False, f"connect: {name}: {os.strerror(err)}", inconclusive=err in _OWN_ERRNOS)
