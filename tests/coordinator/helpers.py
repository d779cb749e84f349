"""Helpers for the coordinator tests: valid events, quickly."""

from __future__ import annotations

import time
import uuid
from typing import Any

from lvs_events.pb.v1 import coordinator_pb2 as cpb
from lvs_events.pb.v1 import events_pb2 as pb

CLUSTER = "test"


def health_event(
    event_id: str | None = None,
    *,
    up: bool = True,
    real: str = "192.0.2.11:80",
    virtual: str = "TCP 203.0.113.10:80",
    node: str = "lvs-a",
    cluster: str = CLUSTER,
) -> pb.Event:
    return pb.Event(
        event_id=event_id or uuid.uuid4().hex,
        cluster=cluster,
        origin=node,
        actor="lvs-agent",
        reason="check",
        wall_time=time.time(),
        real_server_health=pb.RealServerHealth(virtual=virtual, real=real, up=up, observer=node),
    )


def config_event(event_id: str | None = None, *, reals: int = 2, cluster: str = CLUSTER) -> pb.Event:
    vs = pb.VirtualService(
        protocol=pb.PROTOCOL_TCP,
        address="203.0.113.10",
        port=80,
        family=2,
        scheduler="wrr",
        check=pb.CheckSettings(checktype="negotiate"),
    )
    for i in range(reals):
        vs.reals.add(address=f"192.0.2.{11 + i}", port=80, forwarding=pb.FORWARDING_GATE, weight=1 + i)
    return pb.Event(
        event_id=event_id or uuid.uuid4().hex,
        cluster=cluster,
        origin="lvs-a",
        actor="operator",
        reason="load config",
        wall_time=time.time(),
        config_applied=pb.ConfigApplied(config=pb.Config(globals=pb.GlobalSettings(), virtuals=[vs])),
    )


async def publish_all(stub: Any, events: list[pb.Event], deadline: float = 30.0) -> list[cpb.PublishAck]:
    """Publish on one stream (pipelined), half-close, collect every ack in order."""
    call = stub.Publish((cpb.PublishRequest(events=[e]) for e in events), timeout=deadline)
    return [ack async for reply in call for ack in reply.acks]


async def read_log(store: Any, from_revision: int = 1) -> list[pb.Event]:
    return [item.event async for item in store.read(from_revision, follow=False)]
