"""Shared builders for the agent tests: a small config and event makers (no I/O)."""

from __future__ import annotations

import itertools

from lvs_events.domain.config import CheckSettings, Config, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    Event,
    Payload,
    RealServerHealth,
    TableApplied,
)

CLUSTER = "test"
VIP = "TCP 203.0.113.10:80"
REALS = ("192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80")


def config(n_reals: int = 3, *, quiescent: bool = False, checktype: str = "negotiate") -> Config:
    reals = tuple(RealServer(f"192.0.2.{11 + i}", 80, weight=1 + i % 3) for i in range(n_reals))
    v = VirtualService(
        protocol=Protocol.TCP,
        address="203.0.113.10",
        port=80,
        reals=reals,
        quiescent=quiescent,
        check=CheckSettings(checktype=checktype),
    )
    return Config(virtuals=(v,))


_ids = itertools.count(1)


def ev(payload: Payload, revision: int, *, origin: str = "lb1", wall: float = 1_700_000_000.0) -> Event:
    return Event(
        event_id=f"e{next(_ids)}",
        cluster=CLUSTER,
        origin=origin,
        actor="test",
        reason="",
        wall_time=wall + revision,
        payload=payload,
        revision=revision,
    )


def health(real: str, up: bool, observer: str = "lb1") -> RealServerHealth:
    return RealServerHealth(virtual=VIP, real=real, up=up, observer=observer)


def drain(real: str) -> AdminOverride:
    return AdminOverride(virtual=VIP, real=real, action=AdminAction.DRAIN)


def applied(node: str, revision: int, digest: str) -> TableApplied:
    return TableApplied(node=node, revision=revision, digest=digest)


def cfg_event(revision: int, cfg: Config | None = None) -> Event:
    return ev(ConfigApplied(cfg or config()), revision)
