"""The agent's periodic drift check: a kernel table changed behind the agent's back is recorded
as ``DataplaneDrift`` (the difference), then repaired."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.domain.events import DataplaneDrift
from lvs_events.domain.table import Op, Service, Table, diff
from tests.agent.helpers import cfg_event, config


@dataclass(frozen=True)
class FakeDrift:
    ops: tuple[Op, ...]
    foreign: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.ops

    def lines(self) -> list[str]:
        return [str(op) for op in self.ops]


class DriftingDataplane(MemoryDataplane):
    """The memory dataplane with the kernel dataplane's ``drift`` (a real dump: its table)."""

    async def drift(self, desired: Table) -> FakeDrift:
        return FakeDrift(tuple(diff(self.table, desired)), ("FWM 99",))


async def _applied(agent: Agent) -> Table:
    """Fold a config (checks off: every real server in) and apply it: the desired table."""
    agent.core.step(cfg_event(1, config(checktype="on")))
    ready = agent.core.ready(0.0, caught_up=True)
    assert ready is not None
    await agent._execute(ready, 0.0)
    desired = agent.core.applied_table
    assert desired is not None
    return desired


def _agent(tmp_path: Path, dp: MemoryDataplane) -> Agent:
    return Agent(AgentSettings("lb1", "test", ("127.0.0.1:1",), tmp_path, health_checks=False), dp)


async def test_drift_is_published_then_repaired(tmp_path: Path) -> None:
    dp = DriftingDataplane()
    agent = _agent(tmp_path, dp)
    desired = await _applied(agent)
    assert dp.table == desired
    assert await agent.check_drift() is None  # nothing changed

    svc = dp.table.services[0]
    dp.table = Table((replace(svc, dests=(replace(svc.dests[0], weight=99), *svc.dests[2:])),))  # "ipvsadm"
    queued = agent.publisher.queued
    drift = await agent.check_drift()
    assert isinstance(drift, DataplaneDrift)
    assert drift.node == "lb1"
    assert drift.revision == 1
    assert drift.foreign == ("FWM 99",)
    assert drift.repairs == (
        f"add-dest {svc.key} -> {svc.dests[1].key} w={svc.dests[1].weight}",
        f"edit-dest {svc.key} -> {svc.dests[0].key} w={svc.dests[0].weight}",
    )
    assert agent.publisher.queued == queued + 1
    assert dp.table.digest() == desired.digest()  # repaired
    assert await agent.check_drift() is None
    await agent.client.close()


class ObservingDataplane(MemoryDataplane):
    """The memory dataplane with the kernel dataplane's off-the-lock check (``observe``,
    ``compare``, ``recheck``), recording what the agent did when."""

    def __init__(self, agent_lock: list[asyncio.Lock]) -> None:
        super().__init__()
        self.agent_lock = agent_lock
        self.compared_under_lock: list[bool] = []
        self.rechecked: list[set[str]] = []
        self.fix_before_recheck = False

    async def dump_unlocked(self) -> Table:
        return self.table

    async def observe(self, desired: Table, since: Table) -> Table:
        return self.table

    async def compare(self, seen: Table, desired: Table) -> FakeDrift:
        self.compared_under_lock.append(self.agent_lock[0].locked())
        return FakeDrift(tuple(diff(seen, desired)), ("FWM 99",))

    async def recheck(self, desired: Table, services: Iterable[Service]) -> FakeDrift:
        keys = {s.key for s in services}
        self.rechecked.append(keys)
        if self.fix_before_recheck:  # the agent's own apply overtook the observation
            self.table = desired
        want = Table(tuple(s for s in desired.services if s.key in set(keys)))
        have = Table(tuple(s for s in self.table.services if s.key in set(keys)))
        return FakeDrift(tuple(diff(have, want)), ())


async def test_the_comparison_holds_no_lock_and_a_difference_is_read_again(tmp_path: Path) -> None:
    lock: list[asyncio.Lock] = []
    dp = ObservingDataplane(lock)
    agent = _agent(tmp_path, dp)
    lock.append(agent._dataplane_lock)
    desired = await _applied(agent)
    assert await agent.check_drift() is None
    assert dp.compared_under_lock == [False]
    assert dp.rechecked == []  # nothing different: nothing read again

    svc = dp.table.services[0]
    dp.table = Table((replace(svc, dests=(replace(svc.dests[0], weight=99), *svc.dests[1:])),))
    drift = await agent.check_drift()
    assert isinstance(drift, DataplaneDrift)
    assert drift.repairs == (f"edit-dest {svc.key} -> {svc.dests[0].key} w={svc.dests[0].weight}",)
    assert drift.foreign == ("FWM 99",)  # from the comparison
    assert dp.rechecked == [{svc.key}]
    assert dp.table.digest() == desired.digest()

    dp.table = Table((replace(svc, dests=(replace(svc.dests[0], weight=98), *svc.dests[1:])),))
    dp.fix_before_recheck = True
    queued = agent.publisher.queued
    assert await agent.check_drift() is None  # overtaken: not published, not repaired twice
    assert agent.publisher.queued == queued
    assert dp.compared_under_lock == [False, False, False]
    await agent.client.close()
