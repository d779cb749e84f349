"""Subscribe: catch up then follow with no gap or duplicate; filters; compaction and retention."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from lvs_events.coordinator.server import RunningCoordinator
from lvs_events.domain import codec
from lvs_events.domain.state import State
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from tests.coordinator.helpers import config_event, health_event, publish_all


async def _collect(stub, request: cpb.SubscribeRequest, until: int, deadline: float = 30.0) -> list[int]:
    revisions: list[int] = []
    call = stub.Subscribe(request, timeout=deadline)
    async for resp in call:
        assert resp.WhichOneof("item") == "event"
        assert resp.head_revision >= resp.event.revision
        revisions.append(resp.event.revision)
        if resp.event.revision >= until:
            call.cancel()
            break
    return revisions


async def test_subscribe_catches_up_then_follows_without_gap_or_duplicate(stub) -> None:
    await publish_all(stub, [health_event(f"pre-{i}") for i in range(300)])
    total = 300 + 4 * 250

    async def publisher(p: int) -> None:
        for chunk in range(5):
            await publish_all(stub, [health_event(f"live-{p}-{chunk}-{i}") for i in range(50)])
            await asyncio.sleep(0.01)

    # subscribers start at different points: before the seam, mid-history, at the head
    subs = [
        asyncio.create_task(_collect(stub, cpb.SubscribeRequest(from_revision=start, follow=True), total))
        for start in (1, 123, 300, 301)
    ]
    await asyncio.sleep(0.05)
    await asyncio.gather(*(publisher(p) for p in range(4)))
    results = await asyncio.gather(*subs)
    for start, revs in zip((1, 123, 300, 301), results, strict=True):
        assert revs == list(range(start, total + 1))


async def test_subscribe_without_follow_ends_at_the_head(stub) -> None:
    await publish_all(stub, [health_event(f"e{i}") for i in range(20)])
    got = [r.event.revision async for r in stub.Subscribe(cpb.SubscribeRequest(from_revision=5), timeout=10)]
    assert got == list(range(5, 21))


async def test_subscribe_filters(stub) -> None:
    await publish_all(
        stub,
        [
            config_event("cfg"),
            health_event("h-a", node="lvs-a", real="192.0.2.11:80"),
            health_event("h-b", node="lvs-b", real="192.0.2.12:80"),
            health_event("h-other", node="lvs-b", virtual="TCP 203.0.113.20:80", real="192.0.2.50:80"),
        ],
    )

    async def ids(**filters: list[str]) -> list[str]:
        req = cpb.SubscribeRequest(from_revision=1, **filters)
        return [r.event.event_id async for r in stub.Subscribe(req, timeout=10)]

    assert await ids(types=["RealServerHealth"]) == ["h-a", "h-b", "h-other"]
    assert await ids(types=["config_applied"]) == ["cfg"]
    assert await ids(nodes=["lvs-b"]) == ["h-b", "h-other"]
    assert await ids(virtuals=["TCP 203.0.113.10:80"]) == ["cfg", "h-a", "h-b"]
    assert await ids(virtuals=["203.0.113.20"]) == ["h-other"]
    assert await ids(reals=["192.0.2.12"]) == ["cfg", "h-b"]
    assert await ids(reals=["192.0.2.50:80"], types=["RealServerHealth"]) == ["h-other"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ids(types=["NoSuchType"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NoSuchType" in (err.value.details() or "")
    assert "RealServerHealth" in (err.value.details() or "")  # the known types are listed


async def test_every_filter_is_applied_by_the_server_over_the_wire(stub) -> None:
    """A subscriber receives only the matching events (what tail --vip/--real/--node send)."""
    other_vip = "TCP 203.0.113.20:80"
    await publish_all(
        stub,
        [
            config_event("cfg"),  # defines TCP 203.0.113.10:80 with 192.0.2.11 and .12
            health_event("a-11", node="lvs-a", real="192.0.2.11:80"),
            health_event("b-12", node="lvs-b", real="192.0.2.12:80"),
            health_event("b-other", node="lvs-b", virtual=other_vip, real="192.0.2.11:80"),
            health_event("a-other", node="lvs-a", virtual=other_vip, real="192.0.2.50:80"),
        ],
    )

    async def received(**filters: list[str]) -> list[str]:
        req = cpb.SubscribeRequest(from_revision=1, **filters)
        return [r.event.event_id async for r in stub.Subscribe(req, timeout=10)]

    # the vip filter includes the ConfigApplied that defines the service (in its place in the log)
    assert await received(virtuals=["203.0.113.10:80"]) == ["cfg", "a-11", "b-12"]
    assert await received(virtuals=["203.0.113.20"]) == ["b-other", "a-other"]
    assert await received(virtuals=["203.0.113.20"], nodes=["lvs-b"]) == ["b-other"]
    assert await received(reals=["192.0.2.11"], nodes=["lvs-b"]) == ["b-other"]
    assert await received(reals=["192.0.2.11:80"]) == ["cfg", "a-11", "b-other"]
    assert await received(reals=["192.0.2.50"], virtuals=["203.0.113.10"]) == []
    assert await received(nodes=["lvs-a"], types=["real_server_health"]) == ["a-11", "a-other"]


@pytest.fixture
async def timed(start_coordinator):  # type: ignore[no-untyped-def]
    """A coordinator that keeps publishers' wall times as sent, whatever their skew: these tests
    write a log of known times in the past (by default the coordinator replaces a time more than
    a few seconds off its own clock)."""
    async with start_coordinator(max_clock_skew=1e12) as c, grpc.aio.insecure_channel(c.address) as ch:
        yield c, cpb_grpc.CoordinatorStub(ch)  # type: ignore[misc]


async def _publish_timed(stub, n: int, t0: float) -> None:
    events = []
    for i in range(n):
        e = health_event(f"t{i}", up=i % 2 == 0)
        e.wall_time = t0 + i  # revision i + 1 at t0 + i
        events.append(e)
    await publish_all(stub, events)


async def test_since_starts_at_the_first_revision_of_that_time(timed) -> None:  # type: ignore[no-untyped-def]
    coordinator, stub = timed
    t0 = 1_700_000_000.0
    await _publish_timed(stub, 700, t0)
    reads: list[int] = []
    store = coordinator.service.store
    original = store.read

    def counting_read(from_revision: int, *, follow: bool, to_revision: int = 0):  # type: ignore[no-untyped-def]
        reads.append(from_revision)
        return original(from_revision, follow=follow, to_revision=to_revision)

    store.read = counting_read  # type: ignore[method-assign]
    try:

        async def revisions(**fields: object) -> list[int]:
            req = cpb.SubscribeRequest(**fields)  # type: ignore[arg-type]
            return [r.event.revision async for r in stub.Subscribe(req, timeout=10)]

        assert await revisions(since_wall_time=t0 + 377.5) == list(range(379, 701))
        # a binary search: about log2(700) one-event reads, then the one read of the tail
        assert len(reads) <= 12
        assert reads[-1] == 379
        assert await revisions(since_wall_time=t0 + 377) == list(range(378, 701))
        assert await revisions(since_wall_time=t0 - 5) == list(range(1, 701))
        assert await revisions(since_wall_time=t0 + 10_000) == []
        # from_revision still bounds the start; filters apply after it
        assert await revisions(since_wall_time=t0 + 10, from_revision=600) == list(range(600, 701))
        odd = await revisions(since_wall_time=t0 + 689.5, nodes=["lvs-a"])
        assert odd == list(range(691, 701))
    finally:
        store.read = original  # type: ignore[method-assign]


async def test_since_while_following_gets_new_events(timed) -> None:  # type: ignore[no-untyped-def]
    _, stub = timed
    t0 = 1_700_000_000.0
    await _publish_timed(stub, 50, t0)
    req = cpb.SubscribeRequest(since_wall_time=t0 + 1_000, follow=True)
    sub = asyncio.create_task(_collect(stub, req, 52))
    await asyncio.sleep(0.2)
    await publish_all(stub, [health_event("new-1"), health_event("new-2")])  # wall time: now
    assert await asyncio.wait_for(sub, 30) == [51, 52]


async def test_follow_survives_etcd_compaction(stub, store: EtcdEventStore) -> None:
    """etcd's own compaction cancels watches: the reader re-reads and loses nothing."""
    await publish_all(stub, [health_event(f"a{i}") for i in range(50)])
    total = 50 + 200
    sub = asyncio.create_task(_collect(stub, cpb.SubscribeRequest(from_revision=1, follow=True), total))
    client = await store.raw()
    assert client.kv is not None
    for round_ in range(4):
        await publish_all(stub, [health_event(f"b{round_}-{i}") for i in range(50)])
        head = await client.kv.get("/nothing", timeout=5)
        await client.kv.compact(int(head.header.revision), physical=True, timeout=5)
    assert await asyncio.wait_for(sub, 30) == list(range(1, total + 1))


async def test_revision_behind_retention_gets_the_snapshot_first(start_coordinator, store) -> None:
    async with (
        start_coordinator(retention=10, snapshot_every=1_000_000) as c,
        grpc.aio.insecure_channel(c.address) as channel,
    ):
        stub = cpb_grpc.CoordinatorStub(channel)
        await publish_all(stub, [config_event("cfg")] + [health_event(f"e{i}") for i in range(99)])
        snap = await c.states.snapshot_once()
        assert snap is not None
        assert snap.revision == 100
        bounds = await store.bounds()
        assert bounds.first == 91  # 10 kept behind the snapshot
        await publish_all(stub, [health_event(f"t{i}") for i in range(5)])

        # without snapshot_if_compacted: OUT_OF_RANGE
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Subscribe(cpb.SubscribeRequest(from_revision=3), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        # with it: the snapshot, then the tail after it
        items = [
            r
            async for r in stub.Subscribe(
                cpb.SubscribeRequest(from_revision=3, snapshot_if_compacted=True), timeout=10
            )
        ]
        assert items[0].WhichOneof("item") == "snapshot"
        assert items[0].snapshot.revision == 100
        state = codec.loads(State, items[0].snapshot.state)
        assert state.revision == 100
        assert [r.event.revision for r in items[1:]] == list(range(101, 106))
        # a revision still in the log needs no snapshot
        items = [
            r
            async for r in stub.Subscribe(
                cpb.SubscribeRequest(from_revision=95, snapshot_if_compacted=True), timeout=10
            )
        ]
        assert [r.event.revision for r in items] == list(range(95, 106))
        # the trimmed events' ids are gone from the dedup index, the kept ones are not
        client = await store.raw()
        assert client.kv is not None
        assert not (await client.kv.get(store.id_key("e5"), timeout=5)).kvs
        assert (await client.kv.get(store.id_key("e95"), timeout=5)).kvs


async def test_coordinator_fixture_address(coordinator: RunningCoordinator) -> None:
    assert coordinator.address.startswith("127.0.0.1:")
