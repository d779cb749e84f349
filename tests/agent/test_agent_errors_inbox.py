"""Inbox overflow: the apply loop falls behind the subscription by more than ``inbox_size``
items. Real etcd, a real coordinator, the agent in process on a memory dataplane whose applies
the test holds up.

The agent must not block the stream nor fold a log with a hole in it: it drops the backlog,
takes the coordinator's state (``GetState``, one snapshot item for the lot), follows the log
after it, and ends with the log's table; later events are applied as usual (no gap at the seam).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from structlog.testing import capture_logs

from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.client.events import new_event
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import ConfigApplied, Event, RealServerHealth
from lvs_events.domain.table import Op, Service
from tests.agent.cluster import CLUSTER, coordinators, demo_config
from tests.support.etcd import EtcdCluster

INBOX = 5


class GatedDataplane(MemoryDataplane):
    """The memory dataplane; while ``gate`` is clear, every apply waits for it (``waiting``)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = False

    async def _pass(self) -> None:
        self.waiting = not self.gate.is_set()
        await self.gate.wait()
        self.waiting = False

    async def apply(self, ops: list[Op]) -> None:
        await self._pass()
        await super().apply(ops)

    async def reconcile_services(self, desired: Mapping[str, Service | None]) -> tuple[list[Op], bool]:
        await self._pass()
        return await super().reconcile_services(desired)


async def until(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


def verdicts(n: int, up: Callable[[int], bool]) -> list[Event]:
    """``n`` verdicts on the web service's reals in turn, the i-th ``up(i)``."""
    web = demo_config().virtuals[0]
    return [
        new_event(
            RealServerHealth(web.key, web.reals[i % len(web.reals)].key, up(i), "lb2"),
            cluster=CLUSTER,
            origin="lb2",
            actor="t",
        )
        for i in range(n)
    ]


async def test_inbox_overflow_drops_the_backlog_and_resyncs_from_the_coordinators_state(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    async with coordinators(etcd.endpoints, 1) as (coord,), CoordinatorClient([coord.address]) as client:
        config = new_event(ConfigApplied(demo_config()), cluster=CLUSTER, origin="op", actor="t")
        n_reals = len(demo_config().virtuals[0].reals)
        assert all(a.ok for a in await client.publish([config, *verdicts(n_reals, lambda i: True)]))
        settings = AgentSettings(
            node="lb1",
            cluster=CLUSTER,
            endpoints=(coord.address,),
            state_dir=tmp_path / "lb1",
            health_checks=False,
            drift_interval=0,
            inbox_size=INBOX,
        )
        dataplane = GatedDataplane()
        with capture_logs() as logs:
            agent = Agent(settings, dataplane)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:

                async def converged() -> str:
                    want = (await client.get_state()).table_digest
                    await until(lambda: agent.core.applied_digest == want, f"the agent holds {want}")
                    return want

                await converged()
                # (a start from a log longer than the inbox resyncs too: counted from here)
                folded, snapshots, resyncs = (
                    agent.core.events_folded,
                    agent.core.snapshots_loaded,
                    agent.resyncs,
                )
                logged = len([r for r in logs if r.get("event") == "agent.resync"])
                dataplane.gate.clear()
                assert all(a.ok for a in await client.publish(verdicts(1, lambda i: False)))
                await until(lambda: dataplane.waiting, "the apply loop held up in the dataplane")
                backlog = verdicts(8 * INBOX, lambda i: i % 3 != 0)
                assert all(a.ok for a in await client.publish(backlog))
                await until(lambda: agent.resyncs > resyncs, "a resync")
                assert not task.done()
                dataplane.gate.set()
                digest = await converged()
                # the backlog came as one snapshot, not as its events one by one
                assert agent.core.snapshots_loaded > snapshots
                assert agent.core.events_folded - folded < len(backlog), (agent.core.events_folded, folded)
                # and the log is followed after it: a later event is applied
                later = [
                    new_event(ConfigApplied(demo_config(1)), cluster=CLUSTER, origin="op", actor="t"),
                    *verdicts(3, lambda i: False),
                ]
                assert all(a.ok for a in await client.publish(later))
                assert await converged() != digest
            finally:
                stop.set()
                async with asyncio.timeout(30):
                    await task
    records = [r for r in logs if r.get("event") == "agent.resync"][logged:]
    assert records, "the overflow must be logged"
    assert all(r["log_level"] == "warning" and r["dropped"] == INBOX for r in records), records
