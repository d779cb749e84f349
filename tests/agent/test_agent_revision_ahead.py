"""An agent whose stored revision is ahead of the log (etcd restored from an older backup): real
etcd, a real coordinator, the agent as a subprocess.

The agent runs and applies a configuration and some verdicts, then stops. etcd is replaced by a
fresh one (a restore from a backup older than anything the agent saw) and a different
configuration is published: the log's head is now below the agent's stored revision. Restarted,
the agent logs the error naming both revisions, discards its stored state, rebuilds from the
log and converges to it; it then follows the new log.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from lvs_events.client.events import new_event
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import ConfigApplied, RealServerHealth
from tests.agent.cluster import (
    CLUSTER,
    AgentProcess,
    coordinators,
    demo_config,
    mixed_payloads,
    wait_converged,
)
from tests.support.etcd import EtcdCluster, find_etcd

pytestmark = pytest.mark.slow


def _errors(agent: AgentProcess, event: str) -> list[dict[str, object]]:
    out = []
    for line in agent.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out


async def _wait_started(agent: AgentProcess) -> None:
    """Until this process has written its status (the previous one's is on disk meanwhile)."""
    assert agent.proc is not None
    async with asyncio.timeout(30):
        while agent.status().get("pid") != agent.proc.pid:  # noqa: ASYNC110 -- a file the agent writes
            await asyncio.sleep(0.1)


async def test_stored_revision_ahead_of_the_log_is_repaired(etcd: EtcdCluster, tmp_path: Path) -> None:
    state_dir = tmp_path / "lb1"
    async with coordinators(etcd.endpoints, 1) as (c1,):
        eps = [c1.address]
        agent = AgentProcess("lb1", eps, state_dir, demo_config(0))
        agent.start()
        try:
            async with CoordinatorClient(eps) as client:
                payloads = mixed_payloads(40, random.Random(3), "lb2")
                await client.publish(
                    [new_event(p, cluster=CLUSTER, origin="lb2", actor="t") for p in payloads]
                )
                await wait_converged(client, {"lb1": agent.digest})
        finally:
            assert agent.terminate() == 0, agent.log_tail()
            agent.close()
    stored = int(agent.status()["persisted_revision"])
    assert stored > 40

    binary = find_etcd()
    assert binary is not None
    with EtcdCluster(size=1, etcd_binary=binary) as restored:
        async with coordinators(restored.endpoints, 1) as (c2,):
            eps = [c2.address]
            async with CoordinatorClient(eps) as client:
                (ack,) = await client.publish(
                    [new_event(ConfigApplied(demo_config(2)), cluster=CLUSTER, origin="op", actor="t")]
                )
                assert ack.ok
                assert ack.revision < stored
                again = AgentProcess("lb1", eps, state_dir)
                again.start()
                try:
                    digest = await wait_converged(client, {"lb1": again.digest}, within=60)
                    [error] = _errors(again, "agent.stored_revision_ahead_of_log")
                    assert error["level"] == "error"
                    assert error["stored_revision"] == stored
                    assert error["log_head"] == ack.revision
                    status = again.status()
                    assert status["revision"] < stored  # the log's revisions, not the stored ones
                    # it follows the new log from there
                    web = demo_config(2).virtuals[0]
                    (ack2,) = await client.publish(
                        [
                            new_event(
                                RealServerHealth(web.key, web.reals[0].key, True, "lb2"),
                                cluster=CLUSTER,
                                origin="lb2",
                                actor="t",
                            )
                        ]
                    )
                    assert ack2.ok
                    assert await wait_converged(client, {"lb1": again.digest}, within=60) != digest
                    # the repaired state was written: a restart finds nothing ahead
                    assert again.terminate() == 0, again.log_tail()
                    again.start()
                    await _wait_started(again)
                    await wait_converged(client, {"lb1": again.digest}, within=60)
                    assert len(_errors(again, "agent.stored_revision_ahead_of_log")) == 1
                    assert 0 < again.starts()[-1]["stored_revision"] <= ack2.revision
                finally:
                    again.terminate()
                    again.close()
