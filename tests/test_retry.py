"""The one retry policy (lvs_events.retry): delays, deadline, reset, endpoint order."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvs_events.retry import MIN_ATTEMPT, EndpointRing, RetryDeadline, RetryPolicy, call_over_endpoints


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_without_jitter() -> None:
    b = RetryPolicy(initial=0.1, cap=0.5, jitter=0.0).start(rand=lambda: 0.0)
    assert [b.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_immediate_failures_wait_nothing_then_grow_from_initial() -> None:
    b = RetryPolicy(initial=0.1, cap=1.0, jitter=0.0, immediate=1).start(rand=lambda: 0.0)
    assert [b.next_delay() for _ in range(4)] == [0.0, 0.1, 0.2, 0.4]


def test_jitter_takes_at_most_its_share_off() -> None:
    p = RetryPolicy(initial=1.0, cap=1.0, jitter=0.5)
    assert p.delay(1, 0.0) == 1.0
    assert p.delay(1, 0.999999) == pytest.approx(0.5, abs=1e-5)


@given(
    initial=st.floats(0.001, 1.0),
    factor=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 1.0),
    failures=st.integers(1, 10_000),
    rand=st.floats(0.0, 0.999999),
)
def test_a_delay_is_never_negative_nor_over_the_cap(
    initial: float, factor: float, jitter: float, failures: int, rand: float
) -> None:
    p = RetryPolicy(initial=initial, cap=initial * factor, jitter=jitter)
    d = p.delay(failures, rand)
    assert 0.0 <= d <= p.cap


def test_the_deadline_is_never_overslept_and_reset_starts_again() -> None:
    clock = Clock()
    b = RetryPolicy(initial=0.4, cap=10.0, jitter=0.0).start(1.0, clock=clock, rand=lambda: 0.0)
    assert b.next_delay() == 0.4
    clock.now += 0.4
    with pytest.raises(RetryDeadline):
        b.next_delay()  # 0.8 s would end after the 0.6 s left
    b.reset()
    assert b.failures == 0
    assert b.next_delay() == 0.4


def test_no_deadline_never_gives_up() -> None:
    b = RetryPolicy(initial=1.0, cap=1.0, jitter=0.0).start(rand=lambda: 0.0)
    assert b.remaining() is None
    assert all(b.next_delay() == 1.0 for _ in range(100))


@pytest.mark.parametrize(
    ("initial", "cap", "jitter", "immediate"),
    [(0.0, 1.0, 0.5, 0), (0.5, 0.1, 0.5, 0), (0.1, 1.0, 1.5, 0), (0.1, 1.0, 0.5, -1)],
)
def test_nonsense_policies_are_refused(initial: float, cap: float, jitter: float, immediate: int) -> None:
    with pytest.raises(ValueError, match="retry"):
        RetryPolicy(initial=initial, cap=cap, jitter=jitter, immediate=immediate)


def test_a_failed_endpoint_goes_behind_the_others_once() -> None:
    ring = EndpointRing(["a:1", "b:1", "c:1", "a:1"])
    assert ring.endpoints == ("a:1", "b:1", "c:1")
    ring.failed("a:1")
    assert ring.current == "b:1"
    ring.failed("a:1")  # a concurrent caller's report of the same failure moves nothing more
    assert ring.endpoints == ("b:1", "c:1", "a:1")
    with pytest.raises(ValueError, match="endpoint"):
        EndpointRing([])


class Down(Exception):
    """A transient failure (retryable in these tests)."""


class Refused(Exception):
    """A final answer (not retryable)."""


def _transient(e: Exception) -> bool:
    return isinstance(e, Down)


async def test_a_call_moves_past_failing_endpoints_and_the_next_call_starts_on_the_good_one() -> None:
    ring = EndpointRing(["a:1", "b:1", "c:1"])
    tried: list[tuple[str, float]] = []
    failures: list[str] = []

    async def attempt(endpoint: str, seconds: float) -> str:
        tried.append((endpoint, seconds))
        if endpoint != "c:1":
            raise Down(endpoint)
        return f"answer from {endpoint}"

    policy = RetryPolicy(initial=0.01, cap=0.02, immediate=3)
    got = await call_over_endpoints(
        ring,
        attempt,
        policy=policy,
        within=5.0,
        retryable=_transient,
        attempt_timeout=1.0,
        on_failure=lambda ep, e: failures.append(ep),
    )
    assert got == "answer from c:1"
    assert [ep for ep, _ in tried] == ["a:1", "b:1", "c:1"]
    assert all(s == 1.0 for _, s in tried)  # attempt_timeout bounds each attempt
    assert failures == ["a:1", "b:1"]
    tried.clear()
    await call_over_endpoints(ring, attempt, policy=policy, within=5.0, retryable=_transient)
    assert [ep for ep, _ in tried] == ["c:1"]


async def test_spread_shares_the_deadline_among_the_endpoints_not_tried_yet() -> None:
    ring = EndpointRing(["a:1", "b:1", "c:1", "d:1"])
    seconds: list[float] = []

    async def attempt(endpoint: str, s: float) -> None:
        seconds.append(s)
        if endpoint != "d:1":
            raise Down(endpoint)

    policy = RetryPolicy(initial=0.01, cap=0.02, immediate=4)
    await call_over_endpoints(ring, attempt, policy=policy, within=4.0, retryable=_transient, spread=True)
    # 4 s over 4 endpoints, then what is left over 3, 2, 1 (failures are instant here)
    assert [round(s, 1) for s in seconds] == [1.0, 1.3, 2.0, 4.0]


async def test_a_final_answer_is_not_retried() -> None:
    ring = EndpointRing(["a:1", "b:1"])
    calls = 0

    async def attempt(endpoint: str, seconds: float) -> None:
        nonlocal calls
        calls += 1
        raise Refused(endpoint)

    with pytest.raises(Refused):
        await call_over_endpoints(ring, attempt, policy=RetryPolicy(), within=5.0, retryable=_transient)
    assert calls == 1
    assert ring.current == "a:1"


async def test_the_deadline_ends_the_retries_with_the_last_failure_as_cause() -> None:
    ring = EndpointRing(["a:1", "b:1"])
    seconds: list[float] = []

    async def attempt(endpoint: str, s: float) -> None:
        seconds.append(s)
        await asyncio.sleep(0.01)
        raise Down(endpoint)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryDeadline) as err:
        await call_over_endpoints(
            ring, attempt, policy=RetryPolicy(initial=0.02, cap=0.05), within=0.3, retryable=_transient
        )
    assert loop.time() - started < 0.3 + 0.05  # never slept past the deadline
    assert isinstance(err.value.__cause__, Down)
    assert len(seconds) >= 3
    assert min(seconds) >= MIN_ATTEMPT  # never below the floor, even near the deadline
