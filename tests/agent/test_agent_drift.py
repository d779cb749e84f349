"""The agent's periodic drift check: a kernel table changed behind the agent's back is recorded
as ``DataplaneDrift`` (the difference), then repaired."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from agent.dataplane.memory import MemoryDataplane
from agent.runtime import Agent, AgentSettings
from lvs_events.domain.events import DataplaneDrift
from lvs_events.domain.table import Op, Table, diff
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


async def test_drift_is_published_then_repaired(tmp_path: Path) -> None:
    dp = DriftingDataplane()
    settings = AgentSettings("lb1", "test", ("127.0.0.1:1",), tmp_path, health_checks=False)
    agent = Agent(settings, dp)
    agent.core.step(cfg_event(1, config(checktype="on")))
    ready = agent.core.ready(0.0, caught_up=True)
    assert ready is not None
    await agent._execute(ready, 0.0)
    desired = agent.core.applied_table
    assert desired is not None
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
