"""The checker when it, not the server, is late: timeouts in server time, inconclusive checks,
admission (stretched intervals, CheckerHealth), the mass DOWN guard."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest
from immutables import Map

from lvs_events.agent.checks import Checker, CheckSpec, Result
from lvs_events.agent.checks.admission import Admission, CheckerLate, ServerTimeout, acquire_lag, release_lag
from lvs_events.domain.state import CheckerStatus, Observation, State
from tests.checks.servers import closed_port, make_spec
from tests.checks.test_checks_scheduler import VIP, Reports, Script, running, state, until


def _block(seconds: float) -> None:
    time.sleep(seconds)  # the checker's loop cannot run: what CPU starvation looks like from inside


async def test_checks_server_timeout_does_not_count_the_loops_stall() -> None:
    loop = asyncio.get_running_loop()
    lag = acquire_lag(loop)
    try:
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.05, _block, 0.6)  # the loop stalls for twice the timeout
        loop.call_later(0.1, answer.set_result, "ok")  # the server answered in time
        async with ServerTimeout(0.3) as st:
            assert await answer == "ok"
        assert not st.expired
        assert not st.inconclusive
        # a server that does not answer still times out, once it has had its 0.3 s
        began = loop.time()
        with pytest.raises(TimeoutError) as info:
            async with ServerTimeout(0.3):
                await loop.create_future()
        assert not isinstance(info.value, CheckerLate)
        assert 0.25 <= loop.time() - began < 1.0
    finally:
        release_lag(lag)


async def test_checks_server_timeout_is_inconclusive_when_the_checker_never_ran() -> None:
    loop = asyncio.get_running_loop()
    lag = acquire_lag(loop)
    try:
        loop.call_later(0.01, _block, 1.0)  # more than CAP_FACTOR x 0.2 s
        with pytest.raises(CheckerLate):
            async with ServerTimeout(0.2):
                await loop.create_future()
    finally:
        release_lag(lag)


async def test_checks_stalled_probe_is_inconclusive_not_down() -> None:
    """A server known up, a hung probe while the loop is stalled past the cap: no verdict change."""
    started = asyncio.Event()

    async def hung(spec: CheckSpec) -> Result:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never answers")

    st = state(checktimeout=0.2, negotiatetimeout=0.2)
    views = Map({"n1": Observation(True, 1, 1.0)})
    st = State(config=st.config, health=Map({(VIP, "127.0.0.1:1"): views}))
    reports = Reports()
    checker = Checker("n1", probe=hung, rng=random.Random(1))
    checker.on_state(st)
    async with running(checker, reports):
        await asyncio.wait_for(started.wait(), 3)
        _block(1.0)
        await until(lambda: checker.stats.inconclusive >= 1)
    assert checker.verdicts()[(VIP, "127.0.0.1:1")] is True
    assert reports.of("127.0.0.1:1") == []
    assert checker.stats.timeouts == 0


async def test_checks_connect_timeout_counts_the_servers_time() -> None:
    """The epoll connect path: a connect that cannot complete (no SYN-ACK) while the loop is
    stalled past the cap is inconclusive; with the loop running it times out (down)."""
    # a listener that never accepts, with its backlog full: further SYNs are dropped (a hung connect)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.1)
    try:
        st = state([port], checktype="connect", checktimeout=0.3)
        views = Map({"n1": Observation(True, 1, 1.0)})
        st = State(config=st.config, health=Map({(VIP, f"127.0.0.1:{port}"): views}))
        reports = Reports()
        checker = Checker("n1", rng=random.Random(2))
        checker.on_state(st)
        async with running(checker, reports):
            await until(lambda: checker.stats.started >= 1)
            _block(1.5)  # the check's cap is 4 x 0.3 s
            await until(lambda: checker.stats.inconclusive + checker.stats.timeouts >= 1)
            assert checker.stats.inconclusive >= 1, checker.detail((VIP, f"127.0.0.1:{port}"))
            assert reports.of(f"127.0.0.1:{port}") == []
            # unstalled, the hung connect is a timeout: down
            await until(lambda: reports.of(f"127.0.0.1:{port}") == [False], within=5)
        assert checker.stats.timeouts >= 1
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_checks_failure_for_lack_of_own_resources_is_inconclusive() -> None:
    """A refused connect is a real DOWN; the checker's own EMFILE is not (the errno says which)."""
    port = closed_port()
    checker = Checker("n1")

    spec = make_spec(port=port, checktype="connect")
    refused = await checker.check_once(spec, False)
    assert not refused.up
    assert not refused.inconclusive
    assert "ECONNREFUSED" in refused.detail or "refused" in refused.detail.lower()

    async def emfile(spec: CheckSpec) -> Result:
        raise OSError(24, "Too many open files")

    own = await Checker("n1", probe=emfile).check_once(spec, False)
    assert own.inconclusive


def test_checks_admission_cuts_stretches_and_recovers() -> None:
    adm = Admission()
    adm.demand = 1000.0
    assert adm.rate is None
    assert adm.stretch == 1.0
    assert adm.take(0.0)
    # a period with the loop stalled 60% of the time, 300 checks finished
    adm.observe(1.0, 0.6, 300, 0)
    assert adm.rate == pytest.approx(210.0)
    assert adm.stretch == pytest.approx(1000 / 210)
    assert not adm.behind  # not yet: one period
    # overloaded again right after a cut: no second cut before the first shows
    adm.observe(1.0, 0.9, 100, 0)
    assert adm.rate == pytest.approx(210.0)
    assert adm.behind
    # evenly spread: about rate x seconds checks admitted over a second of asks
    taken = sum(adm.take(i / 1000) for i in range(1000))
    assert 200 <= taken <= 235
    # calm periods with checks waiting: the rate goes up step by step
    for _ in range(40):
        adm.take(0.0)
        adm.take(0.0)
        adm.limited = True
        adm.observe(1.0, 0.0, 300, 0)
    assert adm.rate is None
    assert adm.stretch == 1.0
    adm.observe(1.0, 0.0, 1000, 0)
    adm.observe(1.0, 0.0, 1000, 0)
    adm.observe(1.0, 0.0, 1000, 0)
    assert not adm.behind


def test_checks_admission_inconclusive_checks_count_as_overload() -> None:
    adm = Admission()
    adm.demand = 100.0
    adm.observe(1.0, 0.0, 100, 3)
    assert adm.rate == pytest.approx(70.0)


def test_checks_admission_never_stretches_more_than_fifty_fold() -> None:
    adm = Admission()
    adm.demand = 1000.0
    for _ in range(30):  # the loop stalled by something else: finished next to nothing
        adm.observe(1.0, 0.95, 1, 0)
    assert adm.rate == pytest.approx(20.0)


def test_checks_fixed_capacity() -> None:
    adm = Admission(capacity=50.0)
    adm.demand = 100.0
    adm.observe(1.0, 0.0, 50, 0)
    adm.observe(1.0, 0.9, 50, 4)
    assert adm.rate == 50.0
    assert adm.stretch == 2.0


async def test_checks_over_capacity_stretches_the_interval_and_reports_behind() -> None:
    """20 servers at 0.05 s (400 checks/s) through a checker admitting 100 a second."""
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script, rng=random.Random(3), capacity=100.0, control_period=0.2)
    checker.on_state(state(20))
    async with running(checker, reports):
        await until(lambda: any(h.behind for h in reports.checker_health), within=5)
        n0, t0 = len(script.calls), time.monotonic()
        await asyncio.sleep(1.0)
        rate = (len(script.calls) - n0) / (time.monotonic() - t0)
    health = next(h for h in reports.checker_health if h.behind)
    assert health.degraded
    assert health.stretch == pytest.approx(4.0)
    assert health.effective_interval == pytest.approx(0.2)
    assert health.capacity == 100.0
    assert health.demand == 400.0
    assert 60 <= rate <= 130  # the admitted rate, not the demand
    # evenly: every server still gets checked (oldest due first)
    assert min(script.count(f"127.0.0.1:{p}") for p in range(1, 21)) >= 3
    status = checker.status()
    assert status["behind"] is True
    assert status["stretch"] == pytest.approx(4.0)


async def test_checks_caught_up_checker_publishes_once_when_the_log_says_degraded() -> None:
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script, rng=random.Random(4), control_period=0.1)
    st = state(2)
    st = State(config=st.config, checkers=Map({"n1": CheckerStatus(True, True, 3.0, 5, 1.0)}))
    checker.on_state(st)
    async with running(checker, reports):
        await until(lambda: reports.checker_health, within=3)
        await asyncio.sleep(0.5)
    assert [h.degraded for h in reports.checker_health] == [False]


def _all_up(n: int, *, other: dict[int, bool] | None = None) -> State:
    st = state(n, failurecount=1)
    health = Map()
    for p in range(1, n + 1):
        views = {"n1": Observation(True, 1, 1.0)}
        if other is not None and p in other:
            views["n2"] = Observation(other[p], 2, 1.0)
        health = health.set((VIP, f"127.0.0.1:{p}"), Map(views))
    return State(config=st.config, health=health)


async def test_checks_mass_down_guard_holds_unconfirmed_downs() -> None:
    """10 servers fail at once: this node takes at most half of them down per interval."""
    n = 10
    script = Script({f"127.0.0.1:{p}": [False] for p in range(1, n + 1)})
    reports = Reports()
    checker = Checker("n1", probe=script, rng=random.Random(5), mass_down_threshold=0.5)
    checker.on_state(_all_up(n))
    async with running(checker, reports):
        await until(lambda: checker.stats.held >= 1)
        downs_first = sum(1 for _, up, _, _ in reports.items if not up)
        await until(lambda: sum(1 for _, up, _, _ in reports.items if not up) == n, within=5)
    assert downs_first <= 5
    assert checker.stats.held >= 1


async def test_checks_mass_down_guard_lets_confirmed_downs_through() -> None:
    n = 10
    script = Script({f"127.0.0.1:{p}": [False] for p in range(1, n + 1)})
    reports = Reports()
    checker = Checker("n1", probe=script, rng=random.Random(6), mass_down_threshold=0.2)
    # the other director sees all of them down (its checker is healthy): no hold
    checker.on_state(_all_up(n, other=dict.fromkeys(range(1, n + 1), False)))
    async with running(checker, reports):
        await until(lambda: sum(1 for _, up, _, _ in reports.items if not up) == n, within=3)
    assert checker.stats.held == 0


async def test_checks_mass_down_guard_ignores_a_degraded_confirmation() -> None:
    n = 10
    script = Script({f"127.0.0.1:{p}": [False] for p in range(1, n + 1)})
    reports = Reports()
    checker = Checker("n1", probe=script, rng=random.Random(7), mass_down_threshold=0.2)
    st = _all_up(n, other=dict.fromkeys(range(1, n + 1), False))
    checker.on_state(
        State(
            config=st.config, health=st.health, checkers=Map({"n2": CheckerStatus(True, True, 2.0, 9, 1.0)})
        )
    )
    async with running(checker, reports):
        await until(lambda: checker.stats.held >= 1)
        assert sum(1 for _, up, _, _ in reports.items if not up) <= 2


def test_checks_mass_down_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="mass_down_threshold"):
        Checker("n1", mass_down_threshold=0.0)
