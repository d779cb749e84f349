"""The Checker's scheduling and verdict logic, with scripted probes (no network)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from immutables import Map

from lvs_events.agent.checks import Checker, CheckSpec, Result
from lvs_events.agent.health import HealthChecker, HealthReporter
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import CheckerHealth
from lvs_events.domain.state import Observation, State

VIP = "TCP 10.0.0.1:80"
INTERVAL = 0.05


@dataclass
class Reports:
    items: list[tuple[str, bool, str, str]] = field(default_factory=list)
    checker_health: list[CheckerHealth] = field(default_factory=list)
    refuse: int = 0  # refuse this many reports first

    def report(
        self, virtual: str, real: str, up: bool, *, checktype: str, detail: str = "", latency_ms: float = 0.0
    ) -> bool:
        if self.refuse > 0:
            self.refuse -= 1
            return False
        self.items.append((real, up, checktype, detail))
        return True

    def report_checker(self, health: CheckerHealth) -> bool:
        self.checker_health.append(health)
        return True

    def of(self, real: str) -> list[bool]:
        return [up for r, up, _, _ in self.items if r == real]


@dataclass
class Script:
    """Per real server ("ip:port"), the results to return in order; the last one repeats."""

    plan: dict[str, list[bool]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    delay: float = 0.0
    running: int = 0
    peak: int = 0

    async def __call__(self, spec: CheckSpec) -> Result:
        self.calls.append(spec.real)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        seq = self.plan.get(spec.real, [True])
        up = seq.pop(0) if len(seq) > 1 else seq[0]
        return Result(up, "scripted")

    def count(self, real: str) -> int:
        return self.calls.count(real)


def state(
    reals: int | list[int] = 1, *, checktype: str = "negotiate", failurecount: int = 1, **kw: object
) -> State:
    ports = list(range(1, reals + 1)) if isinstance(reals, int) else reals
    v = VirtualService(
        Protocol.TCP, "10.0.0.1", 80,
        reals=tuple(RealServer("127.0.0.1", p) for p in ports),
        check=CheckSettings(checktype=checktype, service="http", failurecount=failurecount, **kw),  # type: ignore[arg-type]
    )  # fmt: skip
    return State(config=Config(GlobalSettings(checkinterval=INTERVAL), (v,)))


@contextlib.asynccontextmanager
async def running(checker: Checker, reports: Reports) -> AsyncIterator[None]:
    task = asyncio.create_task(checker.run(reports))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(cond: Callable[[], object], within: float = 10.0) -> None:
    """Poll ``cond`` (the probes and reports are plain lists, there is nothing to wait on)."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 -- polling test state
            await asyncio.sleep(0.005)


async def test_checks_checker_is_a_health_checker() -> None:
    """Driven only through the HealthChecker protocol: it follows the configuration of the state
    it is given, reports each server's first verdict once, all of them again on resync, and its
    status counts what it did."""
    script = Script({"127.0.0.1:1": [True], "127.0.0.1:2": [False]})
    reports = Reports()
    reporter: HealthReporter = reports
    checker: HealthChecker = Checker("n1", probe=script, control_period=3600)  # no admission here
    checker.on_state(state(2))
    task = asyncio.create_task(checker.run(reporter))
    try:
        await until(lambda: len(reports.items) == 2)
        first = sorted(reports.items)
        assert first == [
            ("127.0.0.1:1", True, "negotiate:http", "scripted"),
            ("127.0.0.1:2", False, "negotiate:http", "scripted"),
        ]
        await until(lambda: script.count("127.0.0.1:1") >= 3 and script.count("127.0.0.1:2") >= 3)
        assert len(reports.items) == 2  # only transitions are reported
        checker.resync()
        await until(lambda: len(reports.items) == 4)
        assert sorted(reports.items[2:]) == first
        checker.on_state(state([1]))  # server 2 leaves the configuration
        gone = script.count("127.0.0.1:2")
        kept = script.count("127.0.0.1:1")
        await until(lambda: script.count("127.0.0.1:1") >= kept + 3)
        assert script.count("127.0.0.1:2") == gone
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    status = checker.status()
    assert len(reports.items) == 4
    assert status["demand"] == 1 / INTERVAL  # checks a second the configuration now asks for
    assert status["checks_finished"] == len(script.calls)  # a scripted check ends where it starts
    started = status["checks_started"]
    assert isinstance(started, int)
    assert 0 <= started - len(script.calls) <= 2  # cancelled before they ran: at removal, at the end
    assert (status["inflight"], status["timeouts"], status["inconclusive"]) == (0, 0, 0)
    assert (status["degraded"], status["behind"]) == (False, False)


async def test_checks_failurecount_then_one_success_restores() -> None:
    script = Script({"127.0.0.1:1": [True, True, False, False, True, False, False, False, True]})
    reports = Reports()
    checker = Checker("n1", probe=script, rng=random.Random(1))
    checker.on_state(state(failurecount=3))
    async with running(checker, reports):
        await until(lambda: script.count("127.0.0.1:1") >= 9)
    # up; two soft failures stay up; a success resets; three failures -> down; one success -> up
    assert reports.of("127.0.0.1:1") == [True, False, True]


async def test_checks_only_transitions_are_reported() -> None:
    script = Script({"127.0.0.1:1": [True] * 5 + [False] * 5 + [True]})
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(state())
    async with running(checker, reports):
        await until(lambda: script.count("127.0.0.1:1") >= 14)
    assert reports.of("127.0.0.1:1") == [True, False, True]
    assert {ct for _, _, ct, _ in reports.items} == {"negotiate:http"}


async def test_checks_first_failure_is_reported_at_once_even_with_failurecount() -> None:
    script = Script({"127.0.0.1:1": [False]})
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(state(failurecount=5))
    async with running(checker, reports):
        await until(lambda: reports.items)
    assert reports.of("127.0.0.1:1") == [False]


async def test_checks_config_change_keeps_unchanged_reals() -> None:
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(state([1, 2]))
    async with running(checker, reports):
        await until(lambda: len(reports.items) == 2)
        checker.on_state(state([2, 3]))
        await until(lambda: script.count("127.0.0.1:3") >= 2)
        gone = script.count("127.0.0.1:1")
        await asyncio.sleep(INTERVAL * 3)
        assert script.count("127.0.0.1:1") == gone  # removed: no longer checked
    assert reports.of("127.0.0.1:2") == [True]  # unchanged: not reported again
    assert reports.of("127.0.0.1:3") == [True]
    assert set(checker.verdicts()) == {(VIP, "127.0.0.1:2"), (VIP, "127.0.0.1:3")}


async def test_checks_changed_check_is_rescheduled_and_keeps_verdict() -> None:
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(state([1]))
    async with running(checker, reports):
        await until(lambda: reports.items)
        checker.on_state(state([1], request="/other"))
        n = len(script.calls)
        await until(lambda: len(script.calls) > n + 1)
    assert reports.of("127.0.0.1:1") == [True]


async def test_checks_resync_reports_everything_again() -> None:
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(state(3))
    async with running(checker, reports):
        await until(lambda: len(reports.items) == 3)
        checker.resync()
        await until(lambda: len(reports.items) == 6)
    assert sorted(r for r, *_ in reports.items[3:]) == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


async def test_checks_refused_report_is_retried() -> None:
    script = Script()
    reports = Reports(refuse=2)
    checker = Checker("n1", probe=script)
    checker.on_state(state(1))
    async with running(checker, reports):
        await until(lambda: reports.items, within=5)
    assert reports.of("127.0.0.1:1") == [True]
    assert checker.stats.refused == 2


async def test_checks_log_view_seeds_the_verdict() -> None:
    st = state(2)
    obs = Observation(up=True, revision=5, wall_time=1.0)
    st = State(config=st.config, health=Map({(VIP, "127.0.0.1:1"): Map({"n1": obs})}))
    script = Script({"127.0.0.1:1": [True], "127.0.0.1:2": [True]})
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(st)
    async with running(checker, reports):
        await until(lambda: script.count("127.0.0.1:1") >= 2 and reports.items)
    assert [r for r, *_ in reports.items] == ["127.0.0.1:2"]


async def test_checks_on_and_off_need_no_probe() -> None:
    script = Script()
    reports = Reports()
    checker = Checker("n1", probe=script)
    checker.on_state(state(2, checktype="off"))
    async with running(checker, reports):
        await until(lambda: len(reports.items) == 2)
        checker.on_state(state(2, checktype="on"))
        await until(lambda: len(reports.items) == 4)
    assert script.calls == []
    assert [up for _, up, _, _ in reports.items] == [False, False, True, True]
    assert reports.items[0][3] == "checktype=off"


async def test_checks_combined_runs_n_connects_then_negotiate() -> None:
    kinds: list[str] = []

    def on_check(spec: CheckSpec, result: Result, started: float, ended: float) -> None:
        kinds.append(result.detail.split(":")[0])

    reports = Reports()
    checker = Checker("n1", on_check=on_check)
    # a real server that is not there: every check fails, so each failed connect forces a
    # negotiate next; use service none (always up) to see the N-connects rhythm instead
    st = state(1, checktype="2")
    v = st.config.virtuals[0]  # type: ignore[union-attr]
    from dataclasses import replace

    from tests.checks.servers import tcp_server

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with tcp_server(close) as port:
        v = replace(v, reals=(RealServer("127.0.0.1", port),), check=replace(v.check, service="none"))
        checker.on_state(State(config=Config(GlobalSettings(checkinterval=INTERVAL), (v,))))
        async with running(checker, reports):
            await until(lambda: len(kinds) >= 7)
    assert kinds[:7] == ["negotiate", "connect", "connect", "negotiate", "connect", "connect", "negotiate"]
    assert reports.items[0][2] == "2:none"


async def test_checks_concurrency_is_bounded() -> None:
    script = Script(delay=0.05)
    reports = Reports()
    checker = Checker("n1", probe=script, max_concurrency=3)
    checker.on_state(state(20))
    async with running(checker, reports):
        await until(lambda: len(reports.items) == 20)
    assert script.peak == 3


async def test_checks_hung_probe_is_cancelled_at_its_timeout() -> None:
    async def forever(spec: CheckSpec) -> Result:
        await asyncio.sleep(3600)
        return Result(True)

    reports = Reports()
    checker = Checker("n1", probe=forever)
    checker.on_state(state(1, negotiatetimeout=0.1, checktimeout=0.1))
    async with running(checker, reports):
        await until(lambda: reports.items)
    assert reports.items[0][1] is False
    assert "timeout after 0.1s" in reports.items[0][3]
    assert checker.stats.timeouts >= 1


async def test_checks_first_checks_are_spread_over_the_interval() -> None:
    """The first checks of 200 new servers are spread over one interval, not fired at once.

    A check never starts before it is due (less a tick), and a loaded machine only makes it
    later: so the share started early in the interval is bounded exactly by the uniform
    schedule; the spread and the end of the first round get wide margins for a machine that
    stalls and then starts several at once. The tight figures are bench/bench_checks.py's."""
    interval, n = 1.0, 200
    first: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def stamp(spec: CheckSpec) -> Result:
        first.setdefault(spec.real, loop.time())
        return Result(True)

    v = state(n).config.virtuals[0]  # type: ignore[union-attr]
    checker = Checker("n1", probe=stamp, rng=random.Random(7))
    t0 = loop.time()
    checker.on_state(State(config=Config(GlobalSettings(checkinterval=interval), (v,))))
    async with running(checker, Reports()):
        await until(lambda: len(first) == n, within=interval + 10)
    offsets = sorted(t - t0 for t in first.values())
    tick = checker.tick
    for q in (0.25, 0.5, 0.75):  # uniform: a share q of the first checks before q intervals
        early = sum(x < q * interval - tick for x in offsets) / n
        assert early <= q + 0.15, (q, early)
    deciles = statistics.quantiles(offsets, n=10)
    assert deciles[-1] - deciles[0] >= 0.3 * interval  # uniform: 0.8 intervals
    assert offsets[-1] < interval + 1.0


async def test_checks_achieved_interval_is_the_checkinterval() -> None:
    """Fixed rate: the k-th check of a server starts no earlier than k intervals after its
    configuration arrived (the scheduler starts a check at most a tick before it is due, and a
    loaded machine only makes it later), and the checks keep to that schedule: a late check does
    not push the next ones back, so 40 checks take 40 intervals, with a wide margin. The achieved
    interval's percentiles are bench/bench_checks.py's."""
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def stamp(spec: CheckSpec) -> Result:
        times.append(loop.time())
        return Result(True)

    n = 40
    checker = Checker("n1", probe=stamp)
    t0 = loop.time()
    checker.on_state(state(1))
    async with running(checker, Reports()):
        await until(lambda: len(times) >= n, within=n * INTERVAL + 10)
    for k, t in enumerate(times[:n]):
        assert t - t0 >= k * INTERVAL - checker.tick, (k, t - t0)
    assert times[n - 1] - t0 < n * INTERVAL + 1.0
