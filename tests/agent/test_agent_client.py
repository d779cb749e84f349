"""CoordinatorClient against real coordinators on a real etcd: dedup by event_id, failover of the
Publish stream and of a following Subscribe when a coordinator stops, and the one-line error."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import grpc
import grpc.aio
import pytest

from lvs_events.client.log import CoordinatorClient, Snapshot, new_event
from lvs_events.domain.events import ConfigApplied, Event
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


class _OldCoordinator(cpb_grpc.CoordinatorServicer):
    """A coordinator from before batch requests: one ack per request, ``events`` unknown."""

    def __init__(self) -> None:
        self.revision = 0
        self.requests = 0

    async def Publish(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for req in request_iterator:
            self.requests += 1
            if not req.HasField("event"):
                yield cpb.PublishAck(error_code="INVALID_ARGUMENT", error="PublishRequest without an event")
                continue
            self.revision += 1
            yield cpb.PublishAck(event_id=req.event.event_id, revision=self.revision)


async def test_publish_falls_back_to_one_event_per_request_for_an_older_coordinator() -> None:
    old = _OldCoordinator()  # type: ignore[abstract]  # Publish is all it serves
    server = grpc.aio.server()
    cpb_grpc.add_CoordinatorServicer_to_server(old, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with CoordinatorClient([f"127.0.0.1:{port}"], timeout=5.0) as client:
            events = [
                new_event(p, cluster=CLUSTER, origin="lb1", actor="test")
                for p in mixed_payloads(5, random.Random(2), "lb1")
            ]
            acks = await client.publish(events)
            assert [a.revision for a in acks] == [1, 2, 3, 4, 5]
            assert all(a.ok for a in acks)
            more = await client.publish(events[:2])  # stays in the one-event mode
            assert [a.revision for a in more] == [6, 7]
    finally:
        await server.stop(None)
