"""The one retry policy (lvs_events.retry): delays, deadline, reset, endpoint order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lvs_events.retry import EndpointRing, RetryDeadline, RetryPolicy


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
