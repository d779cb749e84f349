"""The agent's periodic drift check (``lvs_events.agent.drift``): a table changed behind the
agent's back is recorded as ``DataplaneDrift`` (the difference), then repaired. The memory
dataplane implements the check's steps on the table it holds; a test replacing that table plays
an operator running ``ipvsadm``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from lvs_events.agent.dataplane import Drift, KernelDump, compare
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.domain.events import DataplaneDrift
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold
from lvs_events.domain.table import Service, Table
from tests.agent.helpers import cfg_event, config


async def _applied(agent: Agent) -> Table:
    """Fold a config (checks off: every real server in) and apply it: the desired table."""
    agent.core.step(cfg_event(1, config(checktype="on")))
    ready = agent.core.ready(0.0, caught_up=True)
    assert ready is not None
    await agent._execute(ready, 0.0)
    desired = agent.core.applied_table
    assert desired is not None
    return desired


def _table() -> Table:
    return render(fold(State(), cfg_event(1, config(checktype="on"))))


def _agent(tmp_path: Path, dp: MemoryDataplane) -> Agent:
    return Agent(AgentSettings("lb1", "test", ("127.0.0.1:1",), tmp_path, health_checks=False), dp)


async def test_drift_is_published_then_repaired(tmp_path: Path) -> None:
    dp = MemoryDataplane()
    agent = _agent(tmp_path, dp)
    assert await agent.drift.check() is None  # nothing applied yet: the apply loop's job
    desired = await _applied(agent)
    assert dp.table == desired
    assert await agent.drift.check() is None  # nothing changed

    svc = dp.table.services[0]
    dp.table = Table((replace(svc, dests=(replace(svc.dests[0], weight=99), *svc.dests[2:])),))  # "ipvsadm"
    queued = agent.publisher.queued
    drift = await agent.drift.check()
    assert isinstance(drift, DataplaneDrift)
    assert drift.node == "lb1"
    assert drift.revision == 1
    assert drift.foreign == ()  # every service of the memory dataplane is the agent's
    assert drift.repairs == (
        f"add-dest {svc.key} -> {svc.dests[1].key} w={svc.dests[1].weight}",
        f"edit-dest {svc.key} -> {svc.dests[0].key} w={svc.dests[0].weight}",
    )
    assert agent.publisher.queued == queued + 1
    assert dp.table.digest() == desired.digest()  # repaired
    assert await agent.drift.check() is None
    await agent.client.close()


class ObservingDataplane(MemoryDataplane):
    """The memory dataplane recording when the agent ran the check's steps (under its apply lock
    or not), and which services it read again."""

    def __init__(self, agent_lock: list[asyncio.Lock]) -> None:
        super().__init__()
        self.agent_lock = agent_lock
        self.snapshot_under_lock: list[bool] = []
        self.compared_under_lock: list[bool] = []
        self.rechecked: list[set[str]] = []
        self.fix_before_recheck = False

    async def snapshot_kernel(self, desired: Table, since: KernelDump) -> KernelDump:
        self.snapshot_under_lock.append(self.agent_lock[0].locked())
        return await super().snapshot_kernel(desired, since)

    async def compare(self, seen: KernelDump, desired: Table) -> Drift:
        self.compared_under_lock.append(self.agent_lock[0].locked())
        return await super().compare(seen, desired)

    async def recheck(self, desired: Table, services: Iterable[Service]) -> Drift:
        named = list(services)
        self.rechecked.append({s.key for s in named})
        if self.fix_before_recheck:  # the agent's own apply overtook the snapshot
            self.table = desired
        return await super().recheck(desired, named)


async def test_the_comparison_holds_no_lock_and_a_difference_is_read_again(tmp_path: Path) -> None:
    lock: list[asyncio.Lock] = []
    dp = ObservingDataplane(lock)
    agent = _agent(tmp_path, dp)
    lock.append(agent._dataplane_lock)
    desired = await _applied(agent)
    assert await agent.drift.check() is None
    assert dp.snapshot_under_lock == [True]
    assert dp.compared_under_lock == [False]
    assert dp.rechecked == []  # nothing different: nothing read again

    svc = dp.table.services[0]
    dp.table = Table((replace(svc, dests=(replace(svc.dests[0], weight=99), *svc.dests[1:])),))
    drift = await agent.drift.check()
    assert isinstance(drift, DataplaneDrift)
    assert drift.repairs == (f"edit-dest {svc.key} -> {svc.dests[0].key} w={svc.dests[0].weight}",)
    assert dp.rechecked == [{svc.key}]
    assert dp.table.digest() == desired.digest()

    dp.table = Table((replace(svc, dests=(replace(svc.dests[0], weight=98), *svc.dests[1:])),))
    dp.fix_before_recheck = True
    queued = agent.publisher.queued
    assert await agent.drift.check() is None  # overtaken: not published, not repaired twice
    assert agent.publisher.queued == queued
    assert dp.compared_under_lock == [False, False, False]
    await agent.client.close()


async def test_a_service_added_behind_the_agents_back_is_removed(tmp_path: Path) -> None:
    """A whole service the applied table does not have: found, re-read, deleted."""
    dp = MemoryDataplane()
    agent = _agent(tmp_path, dp)
    desired = await _applied(agent)
    svc = desired.services[0]
    extra = replace(svc, address="203.0.113.99")
    dp.table = Table((*desired.services, extra))
    drift = await agent.drift.check()
    assert isinstance(drift, DataplaneDrift)
    assert drift.repairs == (f"del-service {extra.key}",)
    assert dp.table.digest() == desired.digest()
    await agent.client.close()


def test_compare_repairs_owned_services_and_lists_the_others() -> None:
    """The pure comparison: services not owned are foreign (listed, never repaired)."""
    desired = _table()
    svc = desired.services[0]
    theirs = replace(svc, address="203.0.113.99")
    changed = replace(svc, dests=(replace(svc.dests[0], weight=7), *svc.dests[1:]))
    seen = KernelDump({changed.key: changed, theirs.key: theirs})
    found = compare(seen, desired, {svc.key})
    assert found.foreign == (theirs.key,)
    assert found.lines() == [f"edit-dest {svc.key} -> {svc.dests[0].key} w={svc.dests[0].weight}"]
    assert compare(KernelDump({svc.key: svc, theirs.key: theirs}), desired, {svc.key}).clean
