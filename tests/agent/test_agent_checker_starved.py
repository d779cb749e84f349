"""An agent whose checker is starved of CPU (a cgroup CPU quota) never marks healthy servers down.

Real pieces: etcd, a coordinator, ``lvs-agent`` subprocesses with their real checker, HTTP real
servers on loopback (one process answers on every ``127.1.x.y:PORT``; a stopped server is one
of its own on another address). The log is read as any subscriber reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lvs_events.client.ha import LeaderElectionClient
from lvs_events.client.log import CoordinatorClient, Snapshot
from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import CheckerHealth, Event, RealServerHealth
from lvs_events.domain.render import render
from lvs_events.domain.state import State, checker_degraded, fold
from tests.agent.cluster import REPO, AgentProcess, coordinators
from tests.support.etcd import EtcdCluster, free_ports

pytestmark = pytest.mark.slow

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
VIP = "TCP 10.255.0.1:80"


def _address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


@contextlib.contextmanager
def cpu_quota(name: str, share: float) -> Iterator[Callable[[int], None]]:
    """A cgroup (v1 cpu controller) limited to ``share`` of one CPU; yields "put this pid in it".
    Its processes go back to the root group and the group is removed afterwards."""
    if os.geteuid() != 0 or not (CGROUP_CPU / "cgroup.procs").exists():
        pytest.skip("needs root and the cgroup v1 cpu controller")
    group = CGROUP_CPU / name
    group.mkdir()
    try:
        # short periods: the starved process runs often, a little at a time (the kernel's
        # smallest quota is 1 ms)
        period = max(20_000, int(1000 / share) + 1)
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(period * share)))
        yield lambda pid: (group / "cgroup.procs").write_text(str(pid))
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CGROUP_CPU / "cgroup.procs").write_text(pid)
        group.rmdir()


class Farm:
    """``python -m tests.checks.http_farm HOST PORT`` as a subprocess."""

    def __init__(self, host: str, port: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.checks.http_farm", host, str(port)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the HTTP farm did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def checking_agent(node: str, endpoint: str, state_dir: Path, config: Config | None = None) -> AgentProcess:
    """An agent that runs its own health checks (the helper's agents do not)."""
    return AgentProcess(node, [endpoint], state_dir, config, options=("--drift-interval", "0"))


async def applied(agent: AgentProcess, revision: int, within: float = 60.0) -> None:
    """Wait until ``agent`` has applied the log up to ``revision`` (its status file)."""
    deadline = time.monotonic() + within
    while int(agent.status().get("applied_revision", 0)) < revision:
        if time.monotonic() > deadline:
            raise AssertionError(f"{agent.node} did not apply revision {revision} within {within}s")
        await asyncio.sleep(0.2)


def farm_config(n: int, port: int, victim: str) -> Config:
    victim_address, victim_port = victim.split(":")
    reals = (*(RealServer(_address(i), port) for i in range(n)), RealServer(victim_address, int(victim_port)))
    check = CheckSettings(
        checktype="negotiate",
        service="http",
        request="/",
        receive="OK",
        checktimeout=1.0,
        negotiatetimeout=1.0,
    )
    return Config(
        GlobalSettings(checkinterval=1.0),
        (VirtualService(Protocol.TCP, "10.255.0.1", 80, reals=reals, check=check),),
    )


class LogWatch:
    """Every event of the log, folded as it comes; waits on conditions of the folded state."""

    def __init__(self, client: CoordinatorClient) -> None:
        self.client = client
        self.events: list[Event] = []
        self.state = State()
        self.states: list[State] = []
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        async with self.client.subscribe(0, follow=True) as sub:
            async for item in sub:
                if isinstance(item, Snapshot):
                    self.state = item.state
                    continue
                self.events.append(item)
                self.state = fold(self.state, item)
                if isinstance(item.payload, (RealServerHealth, CheckerHealth)):
                    self.states.append(self.state)
                async with self._changed:
                    self._changed.notify_all()

    async def until(self, cond: Callable[[], bool], within: float, what: str) -> None:
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(cond)
        except TimeoutError:
            raise AssertionError(f"not within {within}s: {what}") from None

    def health(self, observer: str) -> list[RealServerHealth]:
        return [
            e.payload
            for e in self.events
            if isinstance(e.payload, RealServerHealth) and e.payload.observer == observer
        ]

    def checker(self, node: str) -> list[CheckerHealth]:
        return [
            e.payload for e in self.events if isinstance(e.payload, CheckerHealth) and e.payload.node == node
        ]

    def up(self, observer: str) -> set[str]:
        out = set()
        for (_, real), views in self.state.health.items():
            obs = views.get(observer)
            if obs is not None and obs.up:
                out.add(real)
        return out


@contextlib.asynccontextmanager
async def farm_cluster(etcd: EtcdCluster, tmp_path: Path, n: int):  # type: ignore[no-untyped-def]
    port, victim_port = free_ports(2)
    victim = f"127.2.0.1:{victim_port}"
    farm = Farm("0.0.0.0", port)
    victim_farm = Farm("127.2.0.1", victim_port)
    try:
        async with contextlib.AsyncExitStack() as stack:
            (c1,) = await stack.enter_async_context(coordinators(etcd.endpoints, 1))
            client = await stack.enter_async_context(CoordinatorClient([c1.address]))
            watch = LogWatch(client)
            task = asyncio.create_task(watch.run())
            try:
                yield c1.address, farm_config(n, port, victim), victim, victim_farm, watch
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        victim_farm.stop()
        farm.stop()


async def test_starved_checker_marks_no_healthy_server_down(etcd: EtcdCluster, tmp_path: Path) -> None:
    """1,000 healthy HTTP real servers at checkinterval=1, checktimeout=1; the agent's CPU cut to
    a tenth of a core: no DOWN for them, the checker says it is behind and stretches its interval,
    and a server stopped meanwhile is still found down."""
    n = 1000
    async with farm_cluster(etcd, tmp_path, n) as (endpoint, config, victim, victim_farm, watch):
        agent = checking_agent("lb1", endpoint, tmp_path / "lb1", config)
        with cpu_quota(f"lvs-events-test-{os.getpid()}", 0.1) as starve:
            agent.start()
            try:
                everyone = {r.key for r in config.virtuals[0].reals}
                await watch.until(lambda: watch.up("lb1") >= everyone, 60, "every server up")
                await applied(agent, watch.state.revision)  # starve the checks, not the catch-up
                assert agent.proc is not None
                starve(agent.proc.pid)
                await watch.until(
                    lambda: any(h.behind for h in watch.checker("lb1")),
                    40,
                    "the checker reports itself behind",
                )
                began = time.monotonic()
                victim_farm.stop()
                await watch.until(
                    lambda: any(not h.up and h.real == victim for h in watch.health("lb1")),
                    45,
                    "the stopped server found down",
                )
                detected_in = time.monotonic() - began
                status = agent.status().get("checker") or {}
            finally:
                agent.terminate()
                agent.close()
    false_downs = [h for h in watch.health("lb1") if not h.up and h.real != victim]
    assert false_downs == [], false_downs[:5]
    behind = next(h for h in watch.checker("lb1") if h.behind)
    assert behind.degraded
    assert behind.stretch > 1.0
    assert behind.effective_interval > 1.0
    assert behind.capacity < behind.demand
    assert status.get("stretch", 0) > 1.0, status
    assert detected_in < 45


async def test_starved_director_gives_way_to_the_healthy_one(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Two directors check the same servers; lb1 (active) is starved, lb2 is not: once lb1 says
    its checker is degraded, the table follows lb2's view, and a stopped server leaves the table
    on lb2's word."""
    n = 200
    async with farm_cluster(etcd, tmp_path, n) as (endpoint, config, victim, victim_farm, watch):
        election = LeaderElectionClient([endpoint], timeout=5.0)
        lb1 = checking_agent("lb1", endpoint, tmp_path / "lb1", config)
        lb2 = checking_agent("lb2", endpoint, tmp_path / "lb2")
        try:
            reply = await election.campaign("lb1", ttl=300, within=10)
            assert reply.acquired
            with cpu_quota(f"lvs-events-test-{os.getpid()}-2", 0.03) as starve:
                lb1.start()
                lb2.start()
                try:
                    everyone = {r.key for r in config.virtuals[0].reals}
                    await watch.until(
                        lambda: watch.up("lb1") >= everyone and watch.up("lb2") >= everyone,
                        60,
                        "all up, both views",
                    )
                    await applied(lb1, watch.state.revision)
                    assert lb1.proc is not None
                    starve(lb1.proc.pid)
                    await watch.until(
                        lambda: checker_degraded(watch.state, "lb1"), 40, "lb1 reports its checker degraded"
                    )
                    victim_farm.stop()

                    def healthy_view_has_it_down() -> bool:
                        st = watch.state
                        return (
                            checker_degraded(st, "lb1")
                            and not checker_degraded(st, "lb2")
                            and victim not in watch.up("lb2")
                        )

                    await watch.until(
                        healthy_view_has_it_down, 40, "lb2 (not degraded) finds the stopped server down"
                    )
                    final = watch.state
                finally:
                    lb1.terminate()
                    lb2.terminate()
                    lb1.close()
                    lb2.close()
        finally:
            await election.close()
    assert final.leader == "lb1"
    # every state since lb1 said it is degraded (and lb2 was not): the table is lb2's view
    checked = 0
    for st in watch.states:
        if not checker_degraded(st, "lb1") or checker_degraded(st, "lb2"):
            continue
        (svc,) = render(st).services
        # by address: direct routing gives a destination the virtual service's port
        in_table = {d.address for d in svc.dests if d.weight > 0}
        lb2_up = {
            real.split(":")[0]
            for (_, real), views in st.health.items()
            if (o := views.get("lb2")) is not None and o.up
        }
        assert in_table == lb2_up
        checked += 1
    assert checked >= 1
    (svc,) = render(final).services
    assert victim.split(":")[0] not in {d.address for d in svc.dests if d.weight > 0}
    assert [h for h in watch.health("lb1") if not h.up and h.real != victim] == []
