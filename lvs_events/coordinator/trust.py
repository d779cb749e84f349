"""What the coordinator decides about each published event before it queues it, beyond validation.

One call, :meth:`Gate.admit`, per event, after :func:`~lvs_events.coordinator.appender.check_event`:

1. **policy**: the verified principal may publish this event (:mod:`lvs_events.security.policy`;
   a refusal is logged and counted by :class:`~lvs_events.security.interceptor.Refusals`);
2. **quota**: while etcd's database is above the high-water mark of its quota
   (:class:`QuotaWatch`), only directors' events go in (health verdicts, tables applied): the
   room left is kept for the state the directors need, and elections are not Publish at all;
3. **rate**: a token bucket per principal, in events and in bytes per second;
4. **stamp**: ``actor`` and ``origin`` become the verified principal's
   (:func:`~lvs_events.security.policy.stamp`), and ``wall_time`` the coordinator's clock when
   the publisher's is more than ``max_skew`` seconds off (the fold's "now" is the newest
   ``wall_time`` of the log: a publisher clock in the year 9999 would end every timed drain).

A refusal is an ack with ``PERMISSION_DENIED`` (policy) or ``RESOURCE_EXHAUSTED`` (quota, rate)
and a message naming the rule; nothing of the event is stored. Pure apart from the clock, which
callers may pass in.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from lvs_events.domain.events import Event
from lvs_events.errors import StoreError
from lvs_events.pb.v1 import events_pb2 as pb
from lvs_events.security.interceptor import Refusals
from lvs_events.security.policy import Decision, decide, publish_action, show, stamp
from lvs_events.security.principal import Principal, Role

log = structlog.get_logger("coordinator.trust")

DEFAULT_MAX_SKEW = 5.0  # seconds a publisher's wall_time may differ from the coordinator's clock
# Per principal. A director publishes a verdict per real server per check interval and a burst
# when a whole farm flaps; these are far above what a pair of directors sends.
DEFAULT_RATE_EVENTS = 2000.0  # events per second
DEFAULT_BURST_EVENTS = 20000.0
DEFAULT_RATE_BYTES = 8_000_000.0  # bytes per second
DEFAULT_BURST_BYTES = 64_000_000.0
DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's default --quota-backend-bytes
DEFAULT_HIGH_WATER = 0.9
DEFAULT_QUOTA_INTERVAL = 10.0  # seconds between etcd status checks
_QUOTA_TYPES = frozenset({"real_server_health", "table_applied", "dataplane_drift"})
_RATE_LOG_EVERY = 10.0  # seconds between log lines about one principal's rate refusals
_DECISIONS = 4096  # cached policy decisions (principal, action); the policy is pure


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float = math.nan
    stamp: float = 0.0

    def take(self, n: float, now: float) -> bool:
        if math.isnan(self.tokens):
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass(frozen=True, slots=True)
class Limits:
    """Per principal; a rate of 0 turns that limit off."""

    events_per_s: float = DEFAULT_RATE_EVENTS
    burst_events: float = DEFAULT_BURST_EVENTS
    bytes_per_s: float = DEFAULT_RATE_BYTES
    burst_bytes: float = DEFAULT_BURST_BYTES


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class _Budget:
    events: TokenBucket | None
    nbytes: TokenBucket | None
    refused: int = 0
    logged: float = -math.inf


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # a grpc.StatusCode name
    message: str


@dataclass(slots=True)
class QuotaState:
    """The last etcd status seen: database size against the quota; ``alarm`` while above the
    high-water mark (or etcd reports NOSPACE)."""

    quota_bytes: int = DEFAULT_QUOTA_BYTES
    high_water: float = DEFAULT_HIGH_WATER
    quota_fixed: bool = False  # quota_bytes was configured: etcd's reported quota is not used
    db_bytes: int = 0
    nospace: bool = False
    checked: float = 0.0  # time.time() of the last successful check; 0: never

    @property
    def ratio(self) -> float:
        return self.db_bytes / self.quota_bytes if self.quota_bytes > 0 else 0.0

    alarm: bool = False  # set by :meth:`update` (read for every event)

    def update(self, db_bytes: int, nospace: bool) -> None:
        self.db_bytes, self.nospace, self.checked = db_bytes, nospace, time.time()
        self.alarm = nospace or self.ratio >= self.high_water

    def describe(self) -> str:
        what = "etcd reports NOSPACE" if self.nospace else f"{self.ratio:.0%} of its quota"
        return (
            f"etcd database at {self.db_bytes} of {self.quota_bytes} bytes ({what}; high-water mark "
            f"{self.high_water:.0%}): compact and defragment etcd or raise its quota (docs/operations.md)"
        )


@dataclass(slots=True)
class Gate:
    """The per-event decisions of the module docstring, with their counters."""

    refusals: Refusals = field(default_factory=Refusals)
    limits: Limits = DEFAULT_LIMITS
    max_skew: float = DEFAULT_MAX_SKEW
    quota: QuotaState = field(default_factory=QuotaState)
    rate_refused: int = 0
    quota_refused: int = 0
    clamped: int = 0
    _budgets: dict[Principal, _Budget] = field(default_factory=dict)
    _decisions: dict[tuple[str, str, str, str | None], Decision] = field(default_factory=dict)

    def admit(
        self,
        principal: Principal,
        msg: pb.Event,
        event: Event,
        size: int,
        *,
        now: float | None = None,
        mono: float | None = None,
    ) -> Refusal | None:
        """Decide one validated event and, when admitted, stamp it in place (None)."""
        # The policy is pure and its action is (type, subject): decided once per principal and
        # action, then looked up (this runs for every event: no objects made on the way)
        kind = msg.WhichOneof("payload") or ""
        key = (principal.role, principal.name, kind, _subject(msg, kind))
        d = self._decisions.get(key)
        if d is None:
            if len(self._decisions) >= _DECISIONS:
                self._decisions.clear()
            d = self._decisions[key] = decide(principal, publish_action(event))
        if not d.allowed:
            self.refusals.record(principal, f"publish {event.type_name}", d.reason)
            return Refusal("PERMISSION_DENIED", d.reason)
        if self.quota.alarm and not _may_publish_over_quota(principal, msg):
            self.quota_refused += 1
            self.refusals.record(principal, f"publish {event.type_name}", "etcd quota high-water mark")
            return Refusal(
                "RESOURCE_EXHAUSTED",
                f"{self.quota.describe()}; until then only directors' health and table events are accepted",
            )
        refused = self._rate(principal, size, time.monotonic() if mono is None else mono)
        if refused is not None:
            return refused
        msg.actor, msg.origin = stamp(principal, msg.actor, msg.origin)
        now = time.time() if now is None else now
        if abs(msg.wall_time - now) > self.max_skew:
            self._clock(msg, now)
        return None

    def _rate(self, principal: Principal, size: int, mono: float) -> Refusal | None:
        budget = self._budgets.get(principal)
        if budget is None:
            lim = self.limits
            budget = _Budget(
                TokenBucket(lim.events_per_s, lim.burst_events) if lim.events_per_s > 0 else None,
                TokenBucket(lim.bytes_per_s, lim.burst_bytes) if lim.bytes_per_s > 0 else None,
            )
            self._budgets[principal] = budget
        which = ""
        if budget.events is not None and not budget.events.take(1, mono):
            which = f"{self.limits.events_per_s:g} events/s (burst {self.limits.burst_events:g})"
        elif budget.nbytes is not None and not budget.nbytes.take(size, mono):
            which = f"{self.limits.bytes_per_s:g} bytes/s (burst {self.limits.burst_bytes:g})"
        if not which:
            return None
        self.rate_refused += 1
        budget.refused += 1
        if mono - budget.logged >= _RATE_LOG_EVERY:  # one line per principal per period, not per event
            log.warning("rate limit", principal=str(principal), limit=which, refused=budget.refused)
            budget.logged = mono
        return Refusal("RESOURCE_EXHAUSTED", f"rate limit: {principal} is over {which}; retry later")

    def _clock(self, msg: pb.Event, now: float) -> None:
        """The log's clock is the coordinator's: a ``wall_time`` off by more than ``max_skew``
        is replaced by ``now``."""
        skew = msg.wall_time - now
        self.clamped += 1
        log.info(
            "publisher clock off; wall_time set by the coordinator",
            event_id=show(msg.event_id),
            origin=msg.origin,
            skew_s=round(skew, 3) if math.isfinite(skew) else str(skew),
            max_skew_s=self.max_skew,
        )
        msg.wall_time = now

    def counts(self) -> dict[str, int]:
        """Refusals by kind, for GetState's metadata and tests."""
        return {
            "refused": self.refusals.total,
            "rate_refused": self.rate_refused,
            "quota_refused": self.quota_refused,
            "clock_clamped": self.clamped,
        }


def _subject(msg: pb.Event, kind: str) -> str | None:
    """The node an event speaks for, as :func:`~lvs_events.security.policy.publish_action`
    reads it from the domain event (a test holds the two to the same answer)."""
    if kind == "real_server_health":
        return msg.real_server_health.observer
    if kind == "table_applied":
        return msg.table_applied.node
    if kind == "dataplane_drift":
        return msg.dataplane_drift.node
    return None


def _may_publish_over_quota(principal: Principal, msg: pb.Event) -> bool:
    """Over the quota's high-water mark: a director's health and table events (an unverified
    caller's too: without TLS there is no telling a director from anyone else)."""
    if principal.role not in (Role.DIRECTOR, Role.UNVERIFIED):
        return False
    return msg.WhichOneof("payload") in _QUOTA_TYPES


class QuotaReader(Protocol):
    """What :func:`watch_quota` reads: the database size and quota in bytes (quota 0: not
    reported) and whether etcd's NOSPACE alarm is raised (raises
    :class:`~lvs_events.errors.StoreError`)."""

    async def db_status(self) -> tuple[int, int, bool]: ...


async def watch_quota(
    read: QuotaReader, state: QuotaState, interval: float = DEFAULT_QUOTA_INTERVAL
) -> None:
    """Refresh ``state`` every ``interval`` seconds; log when the alarm starts and ends (an
    error line while it lasts, every check). A failed check keeps the last state."""
    was = False
    while True:
        try:
            db_bytes, reported_quota, nospace = await read.db_status()
        except StoreError as e:
            log.info("etcd status check failed", error=str(e))
        else:
            if reported_quota > 0 and not state.quota_fixed:
                state.quota_bytes = reported_quota
            state.update(db_bytes, nospace)
            if state.alarm:
                log.error("etcd quota alarm: refusing appends from non-directors", detail=state.describe())
            elif was:
                log.warning("etcd quota alarm cleared", db_bytes=db_bytes, quota_bytes=state.quota_bytes)
            was = state.alarm
        await asyncio.sleep(interval)
