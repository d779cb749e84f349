"""The checker's view of itself: how late its event loop runs, timeouts that measure the server,
and how many checks a second it admits.

* :class:`LoopLag`: the time the event loop could not run (CPU starvation, a blocked thread
  holding the GIL, a collector pause, a loop too busy to reach its timers), accumulated from a
  heartbeat. One per event loop: the lateness of a loop is the same for every check on it.
* :class:`ServerTimeout`: ``asyncio.timeout`` whose clock runs only while the loop could run, so
  a check's timeout counts the time the server had to answer. A check still unanswered once it
  has taken ``CAP_FACTOR`` times its timeout of wall time, without the server having had its
  timeout, is *inconclusive*: its verdict reflects the checker, not the server.
* :class:`Admission`: the rate at which the checker starts checks. Unlimited while the loop keeps
  up; once it does not (a stalled share of a period above ``OVERLOAD``, or inconclusive checks),
  the rate the checker actually finished checks at, less a margin, then back up step by step
  while the loop keeps up (multiplicative decrease and increase, the decrease larger). The configuration's
  demand above that rate stretches every check interval by the same factor.

:class:`Admission` is pure (the caller passes the time and the measurements).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType
from typing import Final

__all__ = [
    "CAP_FACTOR",
    "OVERLOAD",
    "Admission",
    "CheckerLate",
    "LoopLag",
    "ServerTimeout",
    "acquire_lag",
    "current_lag",
    "release_lag",
]

#: A check is given at most this many times its timeout of wall time (then it is inconclusive).
CAP_FACTOR: Final = 4.0
#: A period whose stalled share exceeds this is an overloaded one (the admitted rate is cut). A
#: busy shared host delays a loop's timers now and then; a starved checker's loop is stalled most
#: of the time. Checks of a loop stalled less than this still measure the server (ServerTimeout).
OVERLOAD: Final = 0.5
_CUT: Final = 0.7  # multiplicative decrease, of the rate the checker finished checks at
_RAISE: Final = 1.25  # increase per calm period with checks waiting (plus _RAISE_MIN a second)
_RAISE_MIN: Final = 2.0
_CALM_BEFORE_RAISE: Final = 2  # calm periods after a cut before the rate goes up again
_CUT_EVERY: Final = 2  # periods between two cuts: a cut shows in the next period's stalls first
#: the rate is never cut below this share of the demand (at most a 50-fold stretch): a loop
#: stalled by something else than the checks (the apply loop catching up, another process)
#: must not starve the checks for long after it ends
_MIN_SHARE: Final = 0.02
_BEHIND_AFTER: Final = 2  # periods with a stretch above _BEHIND_STRETCH before "behind"
_AHEAD_AFTER: Final = 3  # periods without before "not behind"
_BEHIND_STRETCH: Final = 1.05
_BURST: Final = 0.1  # seconds of the admitted rate a burst may take (evenly spread starts)


class LoopLag:
    """Seconds the loop could not run, accumulated.

    A heartbeat timer every ``period`` seconds; a beat that fires more than ``tolerance`` late adds
    its lateness to :attr:`total`. :meth:`stalled` includes the lateness of a beat overdue now, so
    a deadline evaluated at the end of a long stall (before the heartbeat had its turn) sees it.
    ``stalled`` never decreases, and ``t - stalled(t)`` decreases by at most ``tolerance``.
    """

    # A beat's lateness is seen only past its period: the period is short next to the stalls that
    # matter (a CPU quota's throttling lasts tens of milliseconds), so most of a stall is counted.
    def __init__(
        self, loop: asyncio.AbstractEventLoop, period: float = 0.005, tolerance: float = 0.002
    ) -> None:
        self.loop = loop
        self.period = period
        self.tolerance = tolerance
        self.total = 0.0
        self.users = 0
        self._expected = loop.time() + period
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._expected = self.loop.time() + self.period
            self._handle = self.loop.call_at(self._expected, self._beat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        now = self.loop.time()
        late = now - self._expected
        if late > self.tolerance:
            self.total += late
        self._expected = now + self.period
        self._handle = self.loop.call_at(self._expected, self._beat)

    def stalled(self, now: float) -> float:
        """Seconds the loop could not run, up to ``now`` (a loop-time value)."""
        if self._handle is None:
            return self.total
        pending = now - self._expected
        return self.total + pending if pending > self.tolerance else self.total


_LAGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = weakref.WeakKeyDictionary()


def acquire_lag(loop: asyncio.AbstractEventLoop) -> LoopLag:
    """The loop's :class:`LoopLag`, started (counted: :func:`release_lag` stops it with its last user)."""
    lag = _LAGS.get(loop)
    if lag is None:
        lag = _LAGS[loop] = LoopLag(loop)
    lag.users += 1
    lag.start()
    return lag


def release_lag(lag: LoopLag) -> None:
    lag.users -= 1
    if lag.users <= 0:
        lag.users = 0
        lag.stop()
        _LAGS.pop(lag.loop, None)


def current_lag() -> LoopLag | None:
    """The running loop's :class:`LoopLag`, when a checker runs on it."""
    return _LAGS.get(asyncio.get_running_loop())


class CheckerLate(TimeoutError):
    """A :class:`ServerTimeout` ran out of wall time before the server had its timeout."""


class ServerTimeout:
    """``async with ServerTimeout(timeout):`` raises ``TimeoutError`` once the server has had
    ``timeout`` seconds to answer: wall time less the time the loop could not run (see
    :class:`LoopLag`; without one on the loop, wall time). After ``cap_factor * timeout`` of wall
    time it raises :class:`CheckerLate` (a ``TimeoutError``) instead: the checker was too late to
    tell. Cancellation otherwise behaves as ``asyncio.timeout``'s (it is one underneath)."""

    __slots__ = (
        "_cm",
        "_handle",
        "_lag",
        "_loop",
        "_s0",
        "_started",
        "cap",
        "expired",
        "granted",
        "inconclusive",
        "timeout",
    )

    def __init__(self, timeout: float, cap_factor: float = CAP_FACTOR) -> None:
        self.timeout = timeout
        self.cap = timeout * cap_factor
        self.expired = False
        self.inconclusive = False
        self.granted = 0.0  # the seconds the server had, when inconclusive
        self._cm = asyncio.timeout(None)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lag: LoopLag | None = None
        self._started = 0.0
        self._s0 = 0.0

    async def __aenter__(self) -> ServerTimeout:
        loop = self._loop = asyncio.get_running_loop()
        await self._cm.__aenter__()
        lag = self._lag = _LAGS.get(loop)
        self._started = now = loop.time()
        self._s0 = lag.stalled(now) if lag is not None else 0.0
        self._handle = loop.call_at(now + self.timeout, self._check)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        try:
            await self._cm.__aexit__(et, e, tb)
        except TimeoutError as err:
            if self.inconclusive:
                raise CheckerLate(
                    f"checker too late to tell: the server had {self.granted:.3g}s of {self.timeout:g}s"
                ) from err
            raise

    def server_time(self, now: float) -> float:
        """Seconds the server has had to answer, at loop time ``now``."""
        lag = self._lag
        stalled = lag.stalled(now) - self._s0 if lag is not None else 0.0
        return now - self._started - stalled

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        server = self.server_time(now)
        if server >= self.timeout:
            self.expired = True
        elif now - self._started >= self.cap:
            self.inconclusive = True
            self.granted = server
        else:
            when = min(now + self.timeout - server, self._started + self.cap)
            self._handle = loop.call_at(when, self._check)
            return
        self._handle = None
        self._cm.reschedule(now)


class Admission:
    """How many checks a second may start (module docstring). ``capacity`` fixes the rate.

    Time is the caller's (loop time). Per period the caller reports what it saw
    (:meth:`observe`); in between it asks :meth:`take` before starting a due check.
    """

    def __init__(self, *, capacity: float | None = None, min_rate: float = 1.0) -> None:
        if capacity is not None and capacity <= 0:
            raise ValueError("capacity must be positive")
        self.fixed = capacity is not None
        self.rate: float | None = capacity  # None: every due check starts
        self.min_rate = min_rate
        self.demand = 0.0  # checks a second the configuration asks for
        self.tokens = 0.0
        self.limited = False  # a due check waited for a token since the last period
        self.behind = False
        self._refilled: float | None = None
        self._calm = 0
        self._since_cut = _CUT_EVERY
        self._over = 0
        self._under = 0

    @property
    def stretch(self) -> float:
        """Effective interval / configured interval."""
        rate = self.rate
        if rate is None or self.demand <= rate:
            return 1.0
        return self.demand / rate

    def _refill(self, now: float) -> None:
        rate = self.rate
        assert rate is not None
        burst = max(1.0, rate * _BURST)
        if self._refilled is None:
            self.tokens = burst
        else:
            self.tokens = min(burst, self.tokens + (now - self._refilled) * rate)
        self._refilled = now

    def take(self, now: float) -> bool:
        """One check may start now (and is counted)."""
        if self.rate is None:
            return True
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.limited = True
        return False

    def next_token(self, now: float) -> float:
        """When :meth:`take` will next say yes (``now`` when unlimited)."""
        rate = self.rate
        if rate is None:
            return now
        self._refill(now)
        return now if self.tokens >= 1.0 else now + (1.0 - self.tokens) / rate

    def observe(self, elapsed: float, stalled: float, finished: int, inconclusive: int) -> None:
        """One period's measurements: its length, the seconds the loop could not run in it, the
        checks finished and those inconclusive."""
        if elapsed <= 0:
            return
        overloaded = stalled > OVERLOAD * elapsed or inconclusive > 0
        self._since_cut += 1
        if not self.fixed:
            if overloaded:
                self._calm = 0
                if self._since_cut >= _CUT_EVERY:
                    done = finished / elapsed
                    base = done if self.rate is None else min(self.rate, done)
                    floor = max(self.min_rate, self.demand * _MIN_SHARE)
                    self.rate = max(floor, base * _CUT)
                    self._since_cut = 0
            else:
                self._calm += 1
                rate = self.rate
                if rate is not None and self._calm >= _CALM_BEFORE_RAISE:
                    if rate >= self.demand:
                        self.rate = None  # keeps up with the whole demand: no limit
                        self._refilled = None
                    elif self.limited:
                        self.rate = min(self.demand, rate * _RAISE + _RAISE_MIN)
        self.limited = False
        if self.stretch > _BEHIND_STRETCH:
            self._over += 1
            self._under = 0
            if self._over >= _BEHIND_AFTER:
                self.behind = True
        else:
            self._under += 1
            self._over = 0
            if self._under >= _AHEAD_AFTER:
                self.behind = False

    @property
    def capacity(self) -> float:
        """The admitted rate (the demand when unlimited)."""
        return self.demand if self.rate is None else self.rate

    def effective(self, interval: float) -> float:
        """The interval a check configured at ``interval`` seconds actually runs at."""
        stretch = self.stretch
        return interval * stretch if math.isfinite(stretch) else interval
