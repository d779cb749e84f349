"""CoordinatorClient against real coordinators on a real etcd: dedup by event_id, failover of the
Publish stream and of a following Subscribe when a coordinator stops, and the one-line error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time

import grpc
import grpc.aio
import pytest

from lvs_events import wire
from lvs_events.client.events import new_event, new_event_id
from lvs_events.client.log import CoordinatorClient
from lvs_events.domain.events import ConfigApplied, Event, format_event_id
from lvs_events.domain.filters import EventFilter
from lvs_events.domain.snapshot import Snapshot
from lvs_events.errors import CoordinatorUnavailable
from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from tests.agent.cluster import CLUSTER, coordinators, demo_config, mixed_payloads
from tests.support.etcd import EtcdCluster, free_port


def _events(n: int, seed: int = 1) -> list[Event]:
    payloads = [ConfigApplied(demo_config()), *mixed_payloads(n - 1, random.Random(seed), "lb1")]
    return [new_event(p, cluster=CLUSTER, origin="lb1", actor="test") for p in payloads]


async def test_unreachable_endpoints_give_one_line_coordinator_unavailable() -> None:
    eps = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    async with CoordinatorClient(eps, timeout=1.0, attempt_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(CoordinatorUnavailable) as info:
            await client.get_state()
        assert time.monotonic() - started < 3.0
        assert "\n" not in str(info.value)
        assert eps[0] in str(info.value)
        with pytest.raises(CoordinatorUnavailable):
            await client.publish(_events(1))


async def test_same_event_published_twice_is_one_log_entry(etcd: EtcdCluster) -> None:
    async with coordinators(etcd.endpoints, 1) as (c1,), CoordinatorClient([c1.address]) as client:
        events = _events(5)
        first = await client.publish(events)
        again = await client.publish(events)
        assert [a.revision for a in first] == [a.revision for a in again]
        assert all(a.ok and not a.duplicate for a in first)
        assert all(a.duplicate for a in again)
        assert (await client.get_state()).head_revision == 5


async def test_publish_and_follow_survive_a_coordinator_stopping(etcd: EtcdCluster) -> None:
    n = 3000
    async with (
        coordinators(etcd.endpoints, 2) as (c1, c2),
        CoordinatorClient([c1.address, c2.address], timeout=20.0) as client,
    ):
        seen: list[int] = []

        async def follow() -> None:
            async with client.subscribe(1, follow=True) as sub:
                async for item in sub:
                    assert not isinstance(item, Snapshot)
                    seen.append(item.revision)
                    if len(seen) >= n:
                        return

        async with asyncio.TaskGroup() as tg:
            follower = tg.create_task(follow())
            events = _events(n, 3)
            acks = []
            for i in range(0, n, 100):
                if i == n // 2:  # the coordinator both streams use goes away mid-stream
                    await c1.drain(grace=1.0)
                acks += await client.publish(events[i : i + 100])
            async with asyncio.timeout(30):
                await follower
        assert all(a.ok for a in acks)
        revisions = [a.revision for a in acks]
        assert len(set(revisions)) == n  # every event once
        assert seen == list(range(1, n + 1))  # no gap, no duplicate across the failover
        view = await client.get_state()
        assert view.head_revision == n
        with contextlib.suppress(Exception):
            await c2.drain(grace=1.0)


class _RecordingCoordinator(cpb_grpc.CoordinatorServicer):
    """Serves Subscribe from a list of events and records each request; the first stream breaks
    (UNAVAILABLE) after two events."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.requests: list[cpb.SubscribeRequest] = []

    async def Subscribe(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        sent = 0
        for e in self.events:
            if e.revision < request.from_revision:
                continue
            if len(self.requests) == 1 and sent == 2:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            sent += 1
            yield cpb.SubscribeResponse(event=wire.event_to_pb(e), head_revision=self.events[-1].revision)


async def test_subscribe_sends_every_filter_and_since_then_resumes_after_the_last_event() -> None:
    events = [
        dataclasses.replace(e, revision=r, wall_time=1000.0 + r) for r, e in enumerate(_events(6), start=1)
    ]
    fake = _RecordingCoordinator(events[2:])  # as if the server had found revision 3 for since
    server = grpc.aio.server()
    cpb_grpc.add_CoordinatorServicer_to_server(fake, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    wanted = EventFilter(
        types=["real_server_health", "ConfigApplied"], nodes=["lb1"], virtuals=["203.0.113.10"], reals=["x:1"]
    )
    try:
        async with CoordinatorClient([f"127.0.0.1:{port}"], timeout=5.0) as client:
            sub = client.subscribe(0, filters=wanted, since=1002.5)
            got = [item.revision async for item in sub if isinstance(item, Event)]
    finally:
        await server.stop(None)
    assert got == [3, 4, 5, 6]  # no gap, no duplicate across the broken stream
    first, resumed = fake.requests
    assert (first.from_revision, first.since_wall_time) == (0, 1002.5)
    assert list(first.types) == ["ConfigApplied", "RealServerHealth"]
    assert list(first.nodes) == ["lb1"]
    assert (list(first.virtuals), list(first.reals)) == (["203.0.113.10"], ["x:1"])
    # resumed after revision 4: from 5, no new search for ``since``, the same filter
    assert (resumed.from_revision, resumed.since_wall_time) == (5, 0.0)
    assert list(resumed.types) == list(first.types)


def test_event_ids_sort_by_time_and_differ_within_a_millisecond() -> None:
    t = 1_764_429_600.123
    same_ms = {new_event_id(t) for _ in range(200)}
    assert len(same_ms) == 200
    assert all(len(i) == 26 and i.isalnum() and i.isupper() for i in same_ms)
    assert max(same_ms) < new_event_id(t + 0.01)
    assert format_event_id(0, b"") == "0" * 26
    assert format_event_id(1, b"\xff" * 10).startswith("000000000" + "1")
