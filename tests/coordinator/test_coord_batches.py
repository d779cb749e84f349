"""Batch Publish requests, pipelined transactions, keepalive settings."""

from __future__ import annotations

import asyncio

from lvs_events.client import log as client_mod
from lvs_events.coordinator import server
from lvs_events.coordinator.appender import Appender
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.etcd.records import Appended
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.helpers import CLUSTER, health_event, read_log


async def test_batch_request_gets_one_message_with_an_ack_per_event_in_order(
    stub, store: EtcdEventStore
) -> None:
    bad = health_event("bad-1", real="not-an-endpoint")
    batch = [health_event("b-1"), bad, health_event("b-2"), health_event("b-1")]
    single = health_event("s-1")
    call = stub.Publish(
        iter([cpb.PublishRequest(events=batch), cpb.PublishRequest(events=[single])]), timeout=10
    )
    answers = [a async for a in call]
    assert len(answers) == 2
    acks = answers[0].acks
    assert [a.event_id for a in acks] == ["b-1", "bad-1", "b-2", "b-1"]
    assert (acks[0].revision, acks[0].duplicate, acks[0].error_code) == (1, False, "")
    assert acks[1].error_code == "INVALID_ARGUMENT"
    assert "real_server_health.real" in acks[1].error
    assert (acks[2].revision, acks[2].error_code) == (2, "")
    assert (acks[3].revision, acks[3].duplicate) == (1, True)
    assert [(a.event_id, a.revision) for a in answers[1].acks] == [("s-1", 3)]
    assert [e.event_id for e in await read_log(store)] == ["b-1", "b-2", "s-1"]


async def test_pipelined_appends_land_in_call_order_under_a_competing_store(etcd) -> None:
    async with (
        EtcdEventStore(etcd.endpoints, CLUSTER) as mine,
        EtcdEventStore(etcd.endpoints, CLUSTER) as other,
    ):
        batches = [[health_event(f"m{j}-{i}") for i in range(5)] for j in range(30)]
        theirs = [[health_event(f"o{j}-{i}") for i in range(3)] for j in range(30)]
        # all of mine are in flight at once (pipelined); the other store races them
        mine_tasks = [asyncio.create_task(mine.append(b)) for b in batches]
        other_tasks = [asyncio.create_task(other.append(b)) for b in theirs]
        results = await asyncio.gather(*mine_tasks)
        await asyncio.gather(*other_tasks)
        revs = [a.revision for r in results for a in r]
        assert revs == sorted(revs)  # in the order the appends were made
        log = await read_log(mine)
        assert [e.revision for e in log] == list(range(1, 30 * 5 + 30 * 3 + 1))
        assert len({e.event_id for e in log}) == len(log)


def test_clients_keepalive_is_on_by_default_and_accepted_by_the_server() -> None:
    c = client_mod.CoordinatorClient(["127.0.0.1:1"])
    options = dict(c._options)
    assert options["grpc.keepalive_time_ms"] == client_mod.DEFAULT_KEEPALIVE * 1000
    assert options["grpc.keepalive_time_ms"] >= server.MIN_PING_INTERVAL_MS
    assert options["grpc.keepalive_timeout_ms"] <= 5000


class _SlowStore:
    """An EventStore stand-in for the appender: dense revisions, a little latency."""

    max_batch_events = 4

    def indexed(self, event: pb.Event) -> bool:
        return event.HasField("admin_override")

    def fits(self, events: int, indexed: int) -> bool:  # as etcd with --max-txn-ops 10
        return events <= self.max_batch_events and 2 * events + 1 + indexed <= 10

    def __init__(self) -> None:
        self.head = 0
        self.batches: list[list[str]] = []

    async def append(self, events, *, require_term=None, within=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.001)
        self.batches.append([e.event_id for e in events])
        out = []
        for e in events:
            self.head += 1
            out.append(Appended(e.event_id, self.head, duplicate=False))
        return out


async def test_backpressure_lets_waiting_submitters_in_first_come_first_served() -> None:
    store = _SlowStore()
    appender = Appender(store, max_batch_events=4, queue_size=3, max_in_flight=2)  # type: ignore[arg-type]
    runner = asyncio.create_task(appender.run())
    try:
        groups = [[(health_event(f"g{g}-{i}"), 10) for i in range(3)] for g in range(12)]
        submitted = [asyncio.create_task(appender.submit_many(items)) for items in groups]
        await asyncio.gather(*submitted)
        results = [await asyncio.gather(*s.result()) for s in submitted]
        revisions = [a.revision for group in results for a in group]
        assert revisions == list(range(1, 37))  # every event, in the order submitted
    finally:
        runner.cancel()
        await asyncio.wait([runner])


async def test_a_batch_is_cut_where_the_store_says_it_no_longer_fits() -> None:
    """Overrides with an expiry cost the store's transaction one op more (the expiry index): the
    appender asks the store whether each batch fits, so a full batch holds fewer of them."""
    store = _SlowStore()
    appender = Appender(store, max_batch_events=4)  # type: ignore[arg-type]

    def override(event_id: str) -> pb.Event:
        return pb.Event(event_id=event_id, cluster=CLUSTER, admin_override=pb.AdminOverride(expires_at=9.0))

    msgs = [override("o1"), override("o2"), health_event("h1"), override("o3")]
    msgs += [health_event(f"h{i}") for i in range(2, 6)]
    # queued before the appender runs, so they are batched together as far as the limits allow
    futs = await appender.submit_many([(m, 10) for m in msgs])
    runner = asyncio.create_task(appender.run())
    try:
        acks = await asyncio.gather(*futs)
    finally:
        runner.cancel()
        await asyncio.wait([runner])
    assert [a.revision for a in acks] == list(range(1, 9))
    # 10 ops: three events with two overrides (7 + 2), not a fourth override (9 + 3); four
    # events with one (9 + 1)
    assert store.batches == [["o1", "o2", "h1"], ["o3", "h2", "h3", "h4"], ["h5"]]
