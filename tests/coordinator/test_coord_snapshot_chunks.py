"""Snapshots larger than etcd's request limit: compressed, chunked, swapped in by a manifest.

The etcd here runs with its default ``--max-request-bytes`` (1.5 MiB): a 10,000-server state is
a few MB, so a snapshot stored as one value would be refused there."""

from __future__ import annotations

import json
import os
import time

import pytest

from lvs_events.coordinator.snapshots import StateService
from lvs_events.errors import StoreError
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.records import SnapshotRecord
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.conftest import fresh_cluster
from tests.coordinator.helpers import health_event
from tests.support.etcd import EtcdCluster

MIB = 1024 * 1024


def _state(nbytes: int) -> bytes:
    """Canonical-looking JSON that does not compress (random hex)."""
    return json.dumps({"noise": os.urandom(nbytes // 2).hex()}, separators=(",", ":")).encode()


async def _keys(store: EtcdEventStore, prefix: bytes) -> list[bytes]:
    kv = store.connection.kv
    resp = await kv.get(prefix, range_end=prefix[:-1] + bytes([prefix[-1] + 1]), keys_only=True)
    return [bytes(k.key) for k in resp.kvs]


async def test_a_snapshot_over_the_etcd_request_limit_round_trips(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    record = SnapshotRecord(7, _state(3 * MIB), "d" * 64)
    async with EtcdEventStore(etcd.endpoints, cluster) as writer:
        assert await writer.put_snapshot(record)
        chunks = await _keys(writer, writer.keys.snapshots)
        assert len(chunks) >= 3  # random hex compresses to about half: still over 1.5 MiB
    async with EtcdEventStore(etcd.endpoints, cluster) as reader:  # nothing cached
        assert await reader.snapshot_revision() == 7
        got = await reader.get_snapshot()
    assert got == record


async def test_a_newer_snapshot_replaces_the_old_chunks_and_an_older_one_is_refused(
    etcd: EtcdCluster,
) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        assert await store.put_snapshot(SnapshotRecord(5, _state(MIB), "a" * 64))
        first = await _keys(store, store.keys.snapshots)
        assert await store.put_snapshot(SnapshotRecord(9, _state(MIB), "b" * 64))
        second = await _keys(store, store.keys.snapshots)
        assert second
        assert not set(first) & set(second)  # the revision-5 chunks are gone
        assert not await store.put_snapshot(SnapshotRecord(8, _state(MIB), "c" * 64))
        assert await _keys(store, store.keys.snapshots) == second  # the refused one left nothing
    async with EtcdEventStore(etcd.endpoints, cluster) as reader:
        got = await reader.get_snapshot()
    assert got is not None
    assert (got.revision, got.table_digest) == (9, "b" * 64)


async def test_a_damaged_chunk_is_an_error_not_a_wrong_state(etcd: EtcdCluster) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        assert await store.put_snapshot(SnapshotRecord(3, _state(MIB), "a" * 64))
        key = (await _keys(store, store.keys.snapshots))[0]
        await store.connection.kv.put(key, b"not what was written")
    async with EtcdEventStore(etcd.endpoints, cluster) as reader:
        with pytest.raises(StoreError, match="sha256"):
            await reader.get_snapshot()


@pytest.mark.parametrize(
    "manifest",
    [
        b'{"revision":4,"state":{"a":1},"table_digest":"eeee"}',  # the state inline: no format 2
        b'{"format":3,"encoding":"zlib","revision":4}',
        b"[1, 2]",
        b"not json",
    ],
)
async def test_a_manifest_other_than_format_2_is_refused(etcd: EtcdCluster, manifest: bytes) -> None:
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        await store.connection.kv.put(store.keys.snapshot, manifest)
        with pytest.raises(StoreError, match="snapshot manifest"):
            await store.snapshot_revision()
        with pytest.raises(StoreError, match="snapshot manifest"):
            await store.get_snapshot()


def _big_config(cluster: str, virtuals: int, reals: int) -> pb.Event:
    vss = []
    for v in range(virtuals):
        vs = pb.VirtualService(
            protocol=pb.PROTOCOL_TCP,
            address=f"203.0.113.{1 + v}",
            port=80,
            family=2,
            scheduler="wlc",
            check=pb.CheckSettings(checktype="connect"),
        )
        for r in range(reals):
            vs.reals.add(
                address=f"10.{v}.{r // 250}.{1 + r % 250}", port=8080, forwarding=pb.FORWARDING_MASQ, weight=1
            )
        vss.append(vs)
    return pb.Event(
        event_id=f"cfg-{cluster}",
        cluster=cluster,
        origin="lvs-a",
        actor="operator",
        reason="big config",
        wall_time=time.time(),
        config_applied=pb.ConfigApplied(config=pb.Config(globals=pb.GlobalSettings(), virtuals=vss)),
    )


async def test_ten_thousand_real_servers_snapshot_and_cold_start(etcd: EtcdCluster) -> None:
    """The coordinator's own path: snapshot_once on a 10,000-server log, then a fresh
    coordinator folds the same table from the snapshot alone."""
    cluster = fresh_cluster()
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        await store.append([_big_config(cluster, 10, 1000)])
        health = [
            health_event(
                up=True,
                real=f"10.{v}.{r // 250}.{1 + r % 250}:8080",
                virtual=f"TCP 203.0.113.{1 + v}:80",
                cluster=cluster,
            )
            for v in range(10)
            for r in range(1000)
        ]
        for i in range(0, len(health), 60):
            await store.append(health[i : i + 60])
        writer = StateService(store, retention=0)
        written = await writer.snapshot_once()
        assert written is not None
        assert written.revision == 1 + len(health)
        assert len(written.state) > 2 * MIB  # would not fit in one etcd request
        expected = (await writer.state_at(0)).table.digest()
        assert written.table_digest == expected
        assert (await store.bounds()).first == written.revision + 1  # the log was trimmed
    async with EtcdEventStore(etcd.endpoints, cluster) as fresh:
        folded = await StateService(fresh).state_at(0)
    assert folded.state.revision == written.revision
    assert folded.table.digest() == expected
    assert len(folded.table.services) == 10
    assert sum(len(s.dests) for s in folded.table.services) == 10_000
