"""Reading and trimming the log a page at a time, with pages that are exact key ranges.

etcd counts every key of a range to answer it, limit or not: pages are [lo, lo + page) of the
dense revisions, so a read or a trim never walks the rest of the log. These tests pin what the
pages must still do: every event once and in order across page edges, a hole or a trimmed start
reported (StoreError / Compacted), a trim that removes exactly what lies below ``first`` with its
ids, and one that finishes what an interrupted one left.
"""

from __future__ import annotations

import pytest

from lvs_events.errors import Compacted, StoreError
from lvs_events.etcd.events import EtcdEventStore
from tests.coordinator.conftest import fresh_cluster
from tests.coordinator.helpers import health_event
from tests.support.etcd import EtcdCluster

PAGE = 50


async def _fill(store: EtcdEventStore, count: int, cluster: str) -> list[str]:
    ids = [f"e{i:05d}" for i in range(count)]
    for i in range(0, count, 40):
        await store.append([health_event(x, cluster=cluster) for x in ids[i : i + 40]])
    return ids


async def _read(store: EtcdEventStore, frm: int, to: int = 0) -> list[tuple[int, str]]:
    return [
        (item.event.revision, item.event.event_id)
        async for item in store.read(frm, follow=False, to_revision=to)
    ]


async def _count(store: EtcdEventStore, prefix: bytes) -> int:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    resp = await store.connection.kv.get(prefix, range_end=end, count_only=True)
    return int(resp.count)


async def test_reads_cross_page_edges_in_order(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster, page_size=PAGE) as store:
        ids = await _fill(store, 333, cluster)
        assert await _read(store, 1) == [(i + 1, x) for i, x in enumerate(ids)]
        assert await _read(store, 49, 151) == [(r, ids[r - 1]) for r in range(49, 152)]
        assert await _read(store, 333) == [(333, ids[-1])]
        assert await _read(store, 100, 100) == [(100, ids[99])]


async def test_a_hole_in_the_log_is_reported(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster, page_size=PAGE) as store:
        await _fill(store, 120, cluster)
        await store.connection.kv.delete(store.log_key(77))  # in the middle of a page
        with pytest.raises(StoreError, match="expected revision 77, found 78"):
            await _read(store, 1)
        await store.connection.kv.delete(store.log_key(120))  # the last entry: the page ends early
        with pytest.raises(StoreError, match="expected revision 120, found nothing"):
            await _read(store, 100)


async def test_trim_removes_exactly_what_lies_below_first(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster, page_size=PAGE) as store:
        ids = await _fill(store, 400, cluster)
        assert await store.trim(256) == 255
        assert await _count(store, store.keys.log) == 145
        assert await _count(store, store.keys.ids) == 145
        with pytest.raises(Compacted):
            await _read(store, 200)
        assert await _read(store, 256) == [(r, ids[r - 1]) for r in range(256, 401)]
        # an interrupted trim left entries below `first` (here: put back by hand); the next
        # trim finds them from the bottom and finishes the job
        leftover = health_event("left-behind", cluster=cluster)
        leftover.revision = 3
        await store.connection.kv.put(store.log_key(3), leftover.SerializeToString())
        await store.connection.kv.put(store.id_key("left-behind"), b"3")
        assert await store.trim(300) == 45
        assert await _count(store, store.keys.log) == 101
        assert await _count(store, store.keys.ids) == 101
        assert await _read(store, 300) == [(r, ids[r - 1]) for r in range(300, 401)]
