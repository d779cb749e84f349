"""The log's hash chain end to end, on a real etcd and real coordinators.

* appends from two coordinators racing on ``head`` (lost CAS, pipelined batches) and an
  election's Leadership event chain into one unbroken chain from the cluster's genesis, and
  ``head`` holds the last event's hash;
* a snapshot carries the chain head at its revision; a trimmed log verifies from it
  (``lvs-events verify --from-snapshot``);
* a log entry edited directly in etcd is found: ``lvs-events verify`` exits 1 naming the
  revision, a snapshot is refused past it, and an agent replaying the log publishes a
  ``LogIntegrity`` alarm.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc.aio
import pytest

from lvs_events import wire
from lvs_events.agent.core import Policy
from lvs_events.agent.dataplane.memory import MemoryDataplane
from lvs_events.agent.runtime import Agent, AgentSettings
from lvs_events.client.log import CoordinatorClient
from lvs_events.coordinator.snapshots import ChainBrokenError, StateService
from lvs_events.domain.chain import ChainBreak, ChainFollower, genesis, verify
from lvs_events.domain.events import Event, LogIntegrity
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.leader import EtcdLeaderStore
from lvs_events.etcd.records import Head, LeaderRecord, Manifest
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.conftest import StartCoordinator, fresh_cluster
from tests.coordinator.helpers import config_event, health_event, publish_all, read_log
from tests.support.etcd import EtcdCluster


async def _cli(address: str, cluster: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lvs_events.cli.main",
        "--endpoints",
        address,
        "--cluster",
        cluster,
        "--timeout",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _publish(address: str, events: list[pb.Event]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        acks = await publish_all(cpb_grpc.CoordinatorStub(channel), events)
    assert [a.error for a in acks if a.error] == []


async def _head(store: EtcdEventStore) -> Head:
    return await store.head()


async def _tamper(store: EtcdEventStore, revision: int) -> None:
    """Change an entry directly in etcd, as someone with etcd access would: its hashes kept."""
    resp = await store.connection.kv.get(store.log_key(revision))
    msg = pb.Event.FromString(resp.kvs[0].value)
    msg.real_server_health.up = not msg.real_server_health.up
    await store.connection.kv.put(store.log_key(revision), msg.SerializeToString())


async def test_racing_coordinators_and_an_election_chain_into_one_log(
    etcd: EtcdCluster, start_coordinator: StartCoordinator
) -> None:
    cluster = fresh_cluster()
    async with start_coordinator(cluster=cluster) as c1, start_coordinator(cluster=cluster) as c2:
        streams = [
            _publish(c.address, [health_event(cluster=cluster, up=i % 2 == 0) for i in range(150)])
            for c in (c1, c2, c1, c2)
        ]
        async with EtcdEventStore(etcd.endpoints, cluster) as store:
            leaders = EtcdLeaderStore(store)
            lease, _ = await leaders.grant(10)

            def leadership(term: int, _prev: LeaderRecord | None) -> list[pb.Event]:
                ev = health_event(cluster=cluster)
                ev.ClearField("real_server_health")
                ev.leadership.node, ev.leadership.term = "lb1", term
                ev.leadership.change = pb.Leadership.CHANGE_ACQUIRED
                return [ev]

            _, outcome = await asyncio.gather(
                asyncio.gather(*streams),
                leaders.acquire("lb1", lease, address="", expect_term=None, events_for=leadership),
            )
            assert outcome.acquired
            await leaders.close()
            log = await read_log(store)
            head = await _head(store)
        assert len(log) == 601
        found, last, checked = verify(genesis(cluster), [wire.chain_link(m) for m in log])
        assert found is None
        assert checked == 601
        assert last is not None
        assert head == Head(601, last)
        # and as an agent's subscription sees it, through a coordinator
        breaks: list[ChainBreak] = []
        follower = ChainFollower(genesis(cluster), on_break=breaks.append)
        async with (
            CoordinatorClient([c2.address], timeout=10) as client,
            client.subscribe(1, chain=follower) as sub,
        ):
            assert len([item async for item in sub]) == 601
        assert breaks == []
        assert follower.head == last
        code, out = await _cli(c1.address, cluster, "verify")
        assert code == 0, out
        assert "chain intact: revisions 1..601 (601 events)" in out


async def test_a_trimmed_log_verifies_from_the_snapshots_chain_head(
    etcd: EtcdCluster, start_coordinator: StartCoordinator
) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        await store.append([config_event(cluster=cluster)])
        for _ in range(3):
            await store.append([health_event(cluster=cluster) for _ in range(20)])
        states = StateService(store, retention=10, etcd_history=0)
        written = await states.snapshot_once()
        assert written is not None
        log = await read_log(store, (await store.bounds()).first)
        resp = await store.connection.kv.get(store.keys.snapshot)
        manifest = Manifest.from_json(resp.kvs[0].value)
        assert manifest.chain_head == (await _head(store)).hash.hex() == log[-1].hash.hex()
        assert (await store.get_snapshot()) is not None
        await store.append([health_event(cluster=cluster) for _ in range(5)])
        assert (await store.bounds()).first == 52
    async with start_coordinator(cluster=cluster) as c:
        code, out = await _cli(c.address, cluster, "verify")
        assert code == 1
        assert "verify --from-snapshot" in out
        code, out = await _cli(c.address, cluster, "verify", "--from-snapshot")
        assert code == 0, out
        assert "from the snapshot at revision 61" in out
        assert "chain intact: revisions 62..66 (5 events)" in out


async def test_an_entry_edited_in_etcd_is_found_by_verify_snapshots_and_agents(
    etcd: EtcdCluster, start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        await store.append([config_event(cluster=cluster)])
        await store.append([health_event(cluster=cluster, up=True) for _ in range(20)])
        await _tamper(store, 10)
        with pytest.raises(ChainBrokenError, match="revision 10"):
            await StateService(store, etcd_history=0).snapshot_once()
        assert await store.snapshot_revision() == 0
    async with start_coordinator(cluster=cluster) as c:
        code, out = await _cli(c.address, cluster, "verify")
        assert code == 1, out
        assert "chain BROKEN at revision 10: revision 10: hash is" in out
        settings = AgentSettings(
            node="lb1",
            cluster=cluster,
            endpoints=(c.address,),
            state_dir=tmp_path / "lb1",
            health_checks=False,
            drift_interval=0,
            policy=Policy(publish_delay=0.1),
        )
        agent = Agent(settings, MemoryDataplane(tmp_path / "lb1"))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with CoordinatorClient([c.address], timeout=10) as client, asyncio.timeout(30):
                alarm = None
                while alarm is None:
                    await asyncio.sleep(0.1)
                    async with client.subscribe(22) as sub:
                        found = [e async for e in sub if isinstance(e, Event)]
                    found = [e for e in found if isinstance(e.payload, LogIntegrity)]
                    alarm = found[0].payload if found else None
            assert isinstance(alarm, LogIntegrity)
            assert (alarm.node, alarm.revision) == ("lb1", 10)
            assert len(alarm.found) == 64
            assert agent.chain_breaks == 1
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
