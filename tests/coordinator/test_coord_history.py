"""etcd's version history is compacted after snapshots, so its database stops growing.

Every append rewrites ``head``; without compaction etcd keeps each old version until its quota
(NOSPACE: every write refused). The coordinator compacts to ``--etcd-history`` etcd revisions
behind the current one after each snapshot; reads, followers and snapshots go on unharmed.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lvs_events.coordinator.snapshots import StateService
from lvs_events.etcd.events import EtcdEventStore
from tests.coordinator.conftest import fresh_cluster
from tests.coordinator.helpers import health_event
from tests.support.etcd import EtcdCluster


async def _etcd_revision(store: EtcdEventStore) -> int:
    resp = await store.connection.kv.get(store.keys.head)
    return int(resp.header.revision)


async def _old_version_readable(store: EtcdEventStore, revision: int) -> bool:
    try:
        await store.connection.kv.get(store.keys.head, revision=revision)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.OUT_OF_RANGE:  # only "compacted" means "not readable"
            raise
        return False
    return True


async def test_compaction_keeps_the_window_and_the_log(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        start = await _etcd_revision(store)
        for i in range(120):  # one etcd revision each
            await store.append([health_event(f"h{i}", cluster=cluster)])
        now = await _etcd_revision(store)
        assert now >= start + 120
        target = await store.compact_history(50)
        assert target == now - 50
        assert not await _old_version_readable(store, start + 1)
        assert await _old_version_readable(store, now - 10)
        assert await store.compact_history(50) is None  # nothing new to compact
        assert await store.compact_history(0) is None  # off
        # the log itself is whole: reads are at the current revision
        got = [item.event.event_id async for item in store.read(1, follow=False)]
        assert got == [f"h{i}" for i in range(120)]


async def test_a_revision_compacted_elsewhere_is_not_an_error(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with (
        EtcdEventStore(etcd.endpoints, cluster) as one,
        EtcdEventStore(etcd.endpoints, cluster) as other,
    ):
        for i in range(30):
            await one.append([health_event(f"a{i}", cluster=cluster)])
        assert await other.compact_history(5) is not None
        # `one` asks for less (an older target): etcd says compacted already; not an error
        assert await one.compact_history(20) is None


async def test_a_follower_reads_on_across_a_compaction(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        for i in range(20):
            await store.append([health_event(f"f{i}", cluster=cluster)])
        seen: list[str] = []

        async def follow() -> None:
            async for item in store.read(1, follow=True):
                seen.append(item.event.event_id)
                if len(seen) == 80:
                    return

        task = asyncio.create_task(follow())
        for i in range(20, 80):
            await store.append([health_event(f"f{i}", cluster=cluster)])
            if i % 20 == 0:
                await store.compact_history(3)
        await asyncio.wait_for(task, 30)
        assert seen == [f"f{i}" for i in range(80)]


@pytest.mark.parametrize("history", [0, 10])
async def test_the_snapshot_compacts_when_asked(etcd: EtcdCluster, history: int) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        start = await _etcd_revision(store)
        for i in range(40):
            await store.append([health_event(f"s{i}", cluster=cluster)])
        states = StateService(store, retention=5, etcd_history=history)
        assert await states.snapshot_once() is not None
        assert await _old_version_readable(store, start + 1) == (history == 0)
        folded = await states.state_at()
        assert folded.revision == 40
