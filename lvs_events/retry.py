"""The one retry policy: exponential backoff with jitter, bounded by a deadline.

Every loop that retries something (a coordinator call, an etcd transaction, a subscription, the
agent's outbox, the HA runner's election calls) takes a :class:`Backoff` and asks it for the
next delay, instead of writing its own ``min(cap, base * 2 ** n)``. Like Patroni's ``Retry``,
the policy is a value (``initial``, ``cap``, ``jitter``) and the state of one sequence of
attempts (``failures``, ``deadline``) is an object of its own, so two loops never share a
counter by accident.

Invariants:

* the n-th delay (n = failures so far, from 1, less the ``immediate`` ones, which wait 0) is
  ``min(cap, initial * 2 ** (n - 1))``, scaled by a factor drawn uniformly from
  ``[1 - jitter, 1]``: never more than ``cap``, never negative;
* with a deadline, :meth:`Backoff.next_delay` never returns a delay that would end after it:
  it raises :class:`RetryDeadline` instead, so the caller fails with its own error in time;
* :meth:`Backoff.reset` after a success starts the sequence again from ``initial``;
* :func:`call_over_endpoints` runs one call on an :class:`EndpointRing`'s current endpoint,
  moving to the next after a retryable failure, until the call succeeds or the deadline would
  be passed; every attempt has its own timeout, never past the deadline.

Pure apart from the clock and the random source, both injectable (tests pass fixed ones).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

__all__ = ["Backoff", "EndpointRing", "RetryDeadline", "RetryPolicy", "call_over_endpoints"]

T = TypeVar("T")
# The shortest timeout an attempt is given: an RPC with less would fail before reaching a server.
MIN_ATTEMPT: Final = 0.05


class RetryDeadline(Exception):
    """The next attempt would start after the deadline: give up now."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How delays grow: ``initial`` seconds after the first failure, doubling up to ``cap``;
    each delay keeps a random share ``[1 - jitter, 1]`` of itself (spreads retries of many
    clients that failed together)."""

    initial: float = 0.05
    cap: float = 2.0
    jitter: float = 0.5
    immediate: int = 0  # the first ``immediate`` failures retry at once (failover to a peer)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial:
            raise ValueError(f"retry policy needs 0 < initial <= cap, got {self.initial} and {self.cap}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"retry jitter must be within [0, 1], got {self.jitter}")
        if self.immediate < 0:
            raise ValueError(f"retry immediate must be >= 0, got {self.immediate}")

    def delay(self, failures: int, rand: float) -> float:
        """The delay after ``failures`` consecutive failures (>= 1); ``rand`` in [0, 1)."""
        n = max(failures, 1) - self.immediate
        if n <= 0:
            return 0.0
        base = min(self.cap, self.initial * 2.0 ** min(n - 1, 62))
        return base * (1.0 - self.jitter * rand)

    def start(
        self,
        timeout: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> Backoff:
        """A fresh sequence of attempts, ending ``timeout`` seconds from now (None: never)."""
        deadline = None if timeout is None else clock() + timeout
        return Backoff(self, deadline, clock, rand)


@dataclass(slots=True)
class Backoff:
    """One sequence of attempts under a :class:`RetryPolicy` (see the module docstring)."""

    policy: RetryPolicy
    deadline: float | None
    clock: Callable[[], float] = field(repr=False)
    rand: Callable[[], float] = field(repr=False)
    failures: int = 0

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline); may be negative."""
        return None if self.deadline is None else self.deadline - self.clock()

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt;
        raise :class:`RetryDeadline` when that wait would end past the deadline."""
        self.failures += 1
        delay = self.policy.delay(self.failures, self.rand())
        left = self.remaining()
        if left is not None and left <= delay:
            raise RetryDeadline(f"gave up after {self.failures} failures: the deadline is {left:.3f}s away")
        return delay

    async def sleep(self) -> None:
        """``await asyncio.sleep(self.next_delay())``."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.failures = 0


class EndpointRing:
    """Equivalent endpoints tried in turn: the one that failed goes to the back.

    The single failover order used by every client of a set of equivalent servers (the
    coordinators): start with the first that answered last, and after a failure try the
    others before coming back to it.
    """

    __slots__ = ("_order",)

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint (host:port) is needed")
        self._order: list[str] = list(dict.fromkeys(endpoints))

    @property
    def endpoints(self) -> tuple[str, ...]:
        """In the order they will be tried."""
        return tuple(self._order)

    @property
    def current(self) -> str:
        return self._order[0]

    def failed(self, endpoint: str) -> None:
        """``endpoint`` did not answer: move it behind the others (no-op if already moved)."""
        if self._order[0] == endpoint and len(self._order) > 1:
            self._order.append(self._order.pop(0))


async def call_over_endpoints(
    ring: EndpointRing,
    attempt: Callable[[str, float], Awaitable[T]],
    *,
    policy: RetryPolicy,
    within: float,
    retryable: Callable[[Exception], bool],
    attempt_timeout: float | None = None,
    spread: bool = False,
    on_failure: Callable[[str, Exception], None] | None = None,
) -> T:
    """``await attempt(endpoint, seconds)`` on ``ring.current`` until one returns, within
    ``within`` seconds (on the running loop's clock).

    An exception for which ``retryable`` is true moves the endpoint behind the others
    (``ring.failed``), is reported to ``on_failure`` and is followed by ``policy``'s next delay;
    any other exception propagates at once. When the next attempt would start past the
    deadline, :class:`RetryDeadline` is raised from the last failure.

    ``seconds``, the attempt's own timeout, is what is left of ``within``, at most
    ``attempt_timeout``; with ``spread``, the first round divides what is left among the
    endpoints not tried yet, so one unreachable endpoint cannot use up the whole deadline.
    It is never below :data:`MIN_ATTEMPT`.
    """
    backoff = policy.start(within, clock=asyncio.get_running_loop().time)
    n = len(ring.endpoints)
    while True:
        endpoint = ring.current
        left = within if backoff.deadline is None else backoff.deadline - backoff.clock()
        seconds = left / (n - backoff.failures) if spread and backoff.failures < n else left
        if attempt_timeout is not None:
            seconds = min(seconds, attempt_timeout)
        try:
            return await attempt(endpoint, max(MIN_ATTEMPT, seconds))
        except Exception as e:
            if not retryable(e):
                raise
            ring.failed(endpoint)
            if on_failure is not None:
                on_failure(endpoint, e)
            try:
                delay = backoff.next_delay()
            except RetryDeadline as gave_up:
                raise RetryDeadline(f"{gave_up}; the last from {endpoint}: {e}") from e
            await asyncio.sleep(delay)
