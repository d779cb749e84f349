"""Overrides expire on time on a quiet log: two coordinators, one OverrideExpired, at the expiry."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc.aio

from lvs_events import wire
from lvs_events.coordinator.expiry import due, next_expiry
from lvs_events.domain.config import Config, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.events import AdminAction, AdminOverride, ConfigApplied, Event
from lvs_events.domain.state import State, fold
from lvs_events.etcd.events import EtcdEventStore
from lvs_events.pb.v1 import coordinator_pb2_grpc as cpb_grpc
from lvs_events.pb.v1 import events_pb2 as pb
from tests.coordinator.conftest import StartCoordinator
from tests.coordinator.helpers import CLUSTER, config_event, publish_all, read_log

V = "TCP 203.0.113.10:80"


def _drain(real: str, expires_at: float) -> pb.Event:
    return pb.Event(
        event_id=uuid.uuid4().hex,
        cluster=CLUSTER,
        origin="ops",
        actor="alice",
        reason="patch",
        wall_time=time.time(),
        admin_override=pb.AdminOverride(
            virtual=V, real=real, action=pb.AdminOverride.ACTION_DRAIN, expires_at=expires_at
        ),
    )


def test_due_and_next_expiry() -> None:
    cfg = Config(
        virtuals=(
            VirtualService(
                Protocol.TCP,
                "203.0.113.10",
                80,
                reals=(
                    RealServer("192.0.2.11", 80, Forwarding.GATE, 1),
                    RealServer("192.0.2.12", 80, Forwarding.GATE, 1),
                ),
            ),
        )
    )
    s = fold(State(), Event("e1", "c", "n", "a", "", 1.0, ConfigApplied(cfg), revision=1))
    s = fold(
        s,
        Event(
            "e2",
            "c",
            "n",
            "a",
            "",
            1.0,
            AdminOverride(V, "192.0.2.11:80", AdminAction.DRAIN, 0, 50.0),
            revision=2,
        ),
    )
    s = fold(
        s,
        Event("e3", "c", "n", "a", "", 1.0, AdminOverride(V, "192.0.2.12:80", AdminAction.DRAIN), revision=3),
    )
    assert next_expiry(s) == 50.0  # an open-ended override never expires
    assert due(s, 49.9) == []
    assert due(s, 50.0) == [((V, "192.0.2.11:80"), 2)]


async def test_two_coordinators_append_one_expiry_on_time(
    start_coordinator: StartCoordinator, store: EtcdEventStore
) -> None:
    async with (
        start_coordinator() as a,
        start_coordinator() as b,
        grpc.aio.insecure_channel(a.address) as channel,
    ):
        stub = cpb_grpc.CoordinatorStub(channel)
        acks = await publish_all(stub, [config_event()])
        assert acks[0].revision == 1
        expires = time.time() + 1.5
        (drain,) = await publish_all(stub, [_drain("192.0.2.11:80", expires)])
        assert not drain.error_code
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = await read_log(store)
            if len(log) >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # time for a second, duplicate append to show up if there were one
        log = await read_log(store)
    assert b.address != a.address
    assert [e.WhichOneof("payload") for e in log] == ["config_applied", "admin_override", "override_expired"]
    expired = wire.event_from_pb(log[2])
    assert expired.actor == "lvs-coordinator"
    assert expired.event_id == f"expire:{CLUSTER}:2"
    assert 0.0 <= expired.wall_time - expires <= 1.0
