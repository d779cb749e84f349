"""Append through the coordinator: dedup by event_id, refusals, total order across coordinators."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from lvs_events.errors import Fenced
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.helpers import CLUSTER, config_event, health_event, publish_all, read_log


async def test_same_event_id_twice_is_one_log_entry(stub, store: EtcdEventStore) -> None:
    first = await publish_all(stub, [health_event("dup-1")])
    # again on a new stream, and twice inside one stream (one batch)
    second = await publish_all(stub, [health_event("dup-1")])
    third = await publish_all(stub, [health_event("x-1"), health_event("x-1"), health_event("dup-1")])
    assert first[0].revision == 1
    assert not first[0].duplicate
    assert second[0].revision == 1
    assert second[0].duplicate
    assert [a.revision for a in third] == [2, 2, 1]
    assert [a.duplicate for a in third] == [False, True, True]
    assert all(a.error_code == "" for a in first + second + third)
    log = await read_log(store)
    assert [e.event_id for e in log] == ["dup-1", "x-1"]
    assert [e.revision for e in log] == [1, 2]


async def test_invalid_events_are_refused_and_nothing_is_appended(stub, store: EtcdEventStore) -> None:
    no_payload = health_event("no-payload")
    no_payload.ClearField("real_server_health")
    bad_id = health_event("has space")
    bad_ip = health_event("bad-ip", real="192.0.2.300:80")
    other_cluster = health_event("other", cluster="elsewhere")
    oversized = config_event("huge")
    oversized.reason = "x" * 10  # keep reason valid: the size is in the config source
    oversized.config_applied.config.source = "#" * 1_100_000
    acks = await publish_all(stub, [no_payload, bad_id, bad_ip, other_cluster, oversized])
    assert [a.error_code for a in acks] == ["INVALID_ARGUMENT"] * 5
    assert all(a.revision == 0 for a in acks)
    assert "payload" in acks[0].error
    assert "event_id" in acks[1].error
    assert "192.0.2.300" in acks[2].error
    assert "cluster" in acks[3].error
    assert "bytes" in acks[4].error
    assert (await store.bounds()).head == 0
    assert await read_log(store) == []
    # the stream goes on after a refusal: a good event behind a bad one is appended
    acks = await publish_all(stub, [bad_id, health_event("good")])
    assert acks[0].error_code == "INVALID_ARGUMENT"
    assert (acks[1].revision, acks[1].error_code) == (1, "")
    assert [e.event_id for e in await read_log(store)] == ["good"]


async def test_publish_request_without_events_is_refused(stub, store: EtcdEventStore) -> None:
    call = stub.Publish(iter([cpb.PublishRequest()]), timeout=10)
    acks = [a async for a in call]
    assert acks[0].error_code == "INVALID_ARGUMENT"
    assert (await store.bounds()).head == 0


async def test_unary_use_of_the_stream(stub) -> None:
    """One event, wait for its ack, next event: the ack comes without closing the stream."""
    call = stub.Publish(timeout=10)
    for i in range(3):
        await call.write(cpb.PublishRequest(events=[health_event(f"u{i}")]))
        reply = await call.read()
        assert [(a.event_id, a.revision) for a in reply.acks] == [(f"u{i}", i + 1)]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_two_coordinators_concurrent_appends_give_a_dense_total_order(
    start_coordinator, store: EtcdEventStore
) -> None:
    per_publisher = 150
    async with start_coordinator() as a, start_coordinator() as b:
        channels = [grpc.aio.insecure_channel(c.address) for c in (a, b)]
        try:
            stubs = [cpb_grpc.CoordinatorStub(ch) for ch in channels]
            batches = [
                [health_event(f"p{p}-{i}", up=i % 2 == 0) for i in range(per_publisher)] for p in range(6)
            ]
            results = await asyncio.gather(
                *(publish_all(stubs[p % 2], batch) for p, batch in enumerate(batches))
            )
        finally:
            for ch in channels:
                await ch.close()
    acked = {ack.event_id: ack.revision for acks in results for ack in acks}
    assert all(ack.error_code == "" and not ack.duplicate for acks in results for ack in acks)
    total = 6 * per_publisher
    assert sorted(acked.values()) == list(range(1, total + 1))
    log = await read_log(store)
    assert [e.revision for e in log] == list(range(1, total + 1))
    assert {e.event_id: e.revision for e in log} == acked
    # each publisher's events are in its stream order
    for p in range(6):
        revs = [acked[f"p{p}-{i}"] for i in range(per_publisher)]
        assert revs == sorted(revs)


async def test_store_append_concurrent_instances_and_fencing(etcd) -> None:
    async with (
        EtcdEventStore(etcd.endpoints, CLUSTER) as s1,
        EtcdEventStore(etcd.endpoints, CLUSTER) as s2,
    ):
        batches = [[health_event(f"s{j}-{i}") for i in range(20)] for j in range(10)]
        stores = [s1, s2]
        results = await asyncio.gather(*(stores[j % 2].append(b) for j, b in enumerate(batches)))
        revs = sorted(a.revision for r in results for a in r)
        assert revs == list(range(1, 201))
        # the fencing seam: an append under a stale term is refused and appends nothing
        await s1.set_leader_term(7)
        ok = await s1.append([health_event("fenced-ok")], require_term=7)
        assert ok[0].revision == 201
        with pytest.raises(Fenced):
            await s2.append([health_event("fenced-no")], require_term=6)
        assert (await s2.bounds()).head == 201


async def test_single_events_wait_for_room_when_the_append_queue_is_full(
    start_coordinator, store: EtcdEventStore
) -> None:
    """Single-event requests take the fast lane only while the append queue has room; with a
    queue of one event and eight pipelined streams most must wait their turn (backpressure), and
    every event still lands once, in each stream's order."""
    per_publisher = 40
    async with start_coordinator() as c:
        c.appender._queue_size = 1  # the smallest queue, so that it is full most of the time
        waited = 0
        queue_waiting = c.service._queue_waiting

        async def counting(checked: tuple[pb.Event, int], deadline: float | None) -> object:
            nonlocal waited
            waited += 1
            return await queue_waiting(checked, deadline)

        c.service._queue_waiting = counting  # type: ignore[method-assign,assignment]
        async with grpc.aio.insecure_channel(c.address) as channel:
            stub = cpb_grpc.CoordinatorStub(channel)
            batches = [[health_event(f"q{p}-{i}") for i in range(per_publisher)] for p in range(8)]
            results = await asyncio.gather(*(publish_all(stub, batch) for batch in batches))
    assert waited > 0
    acked = {ack.event_id: ack.revision for acks in results for ack in acks}
    assert all(ack.error_code == "" and not ack.duplicate for acks in results for ack in acks)
    assert sorted(acked.values()) == list(range(1, 8 * per_publisher + 1))
    assert {e.event_id: e.revision for e in await read_log(store)} == acked
    for p in range(8):
        revs = [acked[f"q{p}-{i}"] for i in range(per_publisher)]
        assert revs == sorted(revs)
