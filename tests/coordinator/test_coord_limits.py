"""Limits that keep the log readable: a configuration near the real-server cap plus several
events of nearly the maximal size (together far over gRPC's 4 MiB message limit, which the
etcd client and a default client have) still read in every way -- GetState, Subscribe from
revision 1, a snapshot written, the log trimmed, and read back from the snapshot -- by a client
that accepts no message over 4 MiB. Over the caps, events are refused with a clear message."""

from __future__ import annotations

import time
import uuid

import grpc.aio

from lvs_events.client.log import CoordinatorClient, Snapshot
from lvs_events.coordinator.snapshots import StateService
from lvs_events.domain.events import DataplaneDrift, Event
from lvs_events.domain.validate import MAX_EVENT_BYTES, MAX_REAL_SERVERS
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.conftest import StartCoordinator, fresh_cluster
from tests.coordinator.helpers import publish_all
from tests.support.etcd import EtcdCluster

MIB = 1024 * 1024
GRPC_DEFAULT = 4 * MIB


def _base(cluster: str) -> pb.Event:
    return pb.Event(
        event_id=uuid.uuid4().hex, cluster=cluster, origin="lb1", actor="operator", wall_time=time.time()
    )


def _config(cluster: str, reals: int, per_virtual: int = 1000) -> pb.Event:
    ev = _base(cluster)
    cfg = ev.config_applied.config
    cfg.globals.SetInParent()
    for v in range(0, reals, per_virtual):
        vs = cfg.virtuals.add(
            protocol=pb.PROTOCOL_TCP, address=f"203.0.113.{1 + v // per_virtual}", port=80, family=2
        )
        vs.scheduler = "wrr"
        vs.check.checktype = "on"  # every real server in the table
        for r in range(v, min(v + per_virtual, reals)):
            address = f"10.{r // 65536}.{r // 256 % 256}.{r % 256}"
            vs.reals.add(address=address, port=8080, weight=1, forwarding=pb.FORWARDING_GATE)
    return ev


def _large(cluster: str) -> pb.Event:
    """A valid event just under MAX_EVENT_BYTES."""
    ev = _base(cluster)
    ev.dataplane_drift.node = "lb1"
    line = "x" * 4000
    while ev.ByteSize() + 4010 < MAX_EVENT_BYTES:
        ev.dataplane_drift.repairs.append(line)
    return ev


async def test_a_maximal_config_and_maximal_events_read_every_way(
    etcd: EtcdCluster, start_coordinator: StartCoordinator
) -> None:
    cluster = fresh_cluster()
    config = _config(cluster, MAX_REAL_SERVERS - 10)
    assert config.ByteSize() < MAX_EVENT_BYTES
    large = [_large(cluster) for _ in range(6)]
    assert sum(e.ByteSize() for e in large) > GRPC_DEFAULT
    async with start_coordinator(cluster=cluster) as c:
        async with grpc.aio.insecure_channel(c.address) as channel:
            acks = await publish_all(cpb_grpc.CoordinatorStub(channel), [config, *large])
        assert [a.error for a in acks] == [""] * 7
        async with CoordinatorClient([c.address], timeout=30, max_message_bytes=GRPC_DEFAULT) as client:
            view = await client.get_state()
            assert view.revision == 7
            assert sum(len(s.dests) for s in view.table.services) == MAX_REAL_SERVERS - 10
            async with client.subscribe(1) as sub:
                items = [item async for item in sub]
            assert [i.revision for i in items if isinstance(i, Event)] == list(range(1, 8))
            assert isinstance(items[-1], Event)
            assert isinstance(items[-1].payload, DataplaneDrift)
    # a snapshot of it is written and the log trimmed past it (pages of large events)
    async with EtcdEventStore(etcd.endpoints, cluster) as store:
        written = await StateService(store, retention=0, etcd_history=0).snapshot_once()
        assert written is not None
        assert written.revision == 7
        assert (await store.bounds()).first == 8
        read = await store.get_snapshot()
        assert read is not None
        assert (read.revision, read.state, read.chain_head) == (7, written.state, written.chain_head)
    async with start_coordinator(cluster=cluster) as c:
        async with grpc.aio.insecure_channel(c.address) as channel:
            acks = await publish_all(cpb_grpc.CoordinatorStub(channel), [_large(cluster) for _ in range(5)])
        assert [a.revision for a in acks] == list(range(8, 13))
        async with CoordinatorClient([c.address], timeout=30, max_message_bytes=GRPC_DEFAULT) as client:
            async with client.subscribe(1) as sub:
                items = [item async for item in sub]
            assert isinstance(items[0], Snapshot)
            assert items[0].revision == 7
            assert items[0].table_digest == view.table_digest
            assert [i.revision for i in items[1:] if isinstance(i, Event)] == list(range(8, 13))
            again = await client.get_state(7)
            assert again.table_digest == view.table_digest
            assert len(again.table.services) == len(view.table.services)


async def test_over_the_caps_an_event_is_refused_with_a_clear_message(
    start_coordinator: StartCoordinator,
) -> None:
    cluster = fresh_cluster()
    too_big = _large(cluster)
    too_big.dataplane_drift.repairs.extend(["y" * 4000] * 4)
    async with start_coordinator(cluster=cluster) as c, grpc.aio.insecure_channel(c.address) as channel:
        stub = cpb_grpc.CoordinatorStub(channel)
        acks = await publish_all(stub, [_config(cluster, MAX_REAL_SERVERS + 1, per_virtual=2000), too_big])
        assert [a.error_code for a in acks] == ["INVALID_ARGUMENT"] * 2
        cap = f"at most {MAX_REAL_SERVERS} real servers over all virtual services"
        assert f"{cap}, found {MAX_REAL_SERVERS + 1}" in acks[0].error
        assert f"at most {MAX_EVENT_BYTES} bytes" in acks[1].error
        ok = await publish_all(stub, [_config(cluster, MAX_REAL_SERVERS, per_virtual=2000)])
        assert ok[0].error == ""
