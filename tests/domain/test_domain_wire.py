"""The protobuf edge: every domain field has a wire field, and events round-trip exactly."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings

from lvs_events import wire
from lvs_events.domain import config as dc
from lvs_events.domain import events as de
from lvs_events.domain.validate import validate_event
from lvs_events.errors import InvalidEvent
from lvs_events.pb.v1 import events_pb2 as pb
from tests.domain.strategies import event_logs

PAIRS = [
    (dc.RealServer, pb.RealServer),
    (dc.CheckSettings, pb.CheckSettings),
    (dc.VirtualService, pb.VirtualService),
    (dc.GlobalSettings, pb.GlobalSettings),
    (dc.Config, pb.Config),
    (de.ConfigApplied, pb.ConfigApplied),
    (de.RealServerHealth, pb.RealServerHealth),
    (de.AdminOverride, pb.AdminOverride),
    (de.TableApplied, pb.TableApplied),
    (de.Leadership, pb.Leadership),
    (de.DrillMarker, pb.DrillMarker),
    (de.ConfigRejected, pb.ConfigRejected),
    (de.DataplaneDrift, pb.DataplaneDrift),
    (de.LogIntegrity, pb.LogIntegrity),
    (de.CheckerHealth, pb.CheckerHealth),
]


@pytest.mark.parametrize(("domain", "message"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_domain_and_wire_fields_match(domain: type, message: type) -> None:
    ours = {f.name for f in dataclasses.fields(domain)}
    theirs = set(message.DESCRIPTOR.fields_by_name)
    assert ours == theirs


@settings(max_examples=150, deadline=None)
@given(event_logs(max_size=20))
def test_events_round_trip_through_the_wire(events: list[de.Event]) -> None:
    for e in events:
        assert wire.event_from_bytes(wire.event_to_bytes(e)) == e


def test_undecodable_bytes_are_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent):
        wire.event_from_bytes(b"\xff\xff\xff")


def test_event_without_payload_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="no payload"):
        wire.event_from_pb(pb.Event(event_id="x"))


def _ev(payload: de.Payload, **kw: object) -> de.Event:
    base: dict[str, object] = {
        "event_id": "id-1",
        "cluster": "c1",
        "origin": "master",
        "actor": "op",
        "reason": "",
        "wall_time": 1000.0,
        "payload": payload,
    }
    base.update(kw)
    return de.Event(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (_ev(de.TableApplied("master", 1, "0" * 64), event_id=""), "event_id"),
        (_ev(de.TableApplied("master", 1, "0" * 64), event_id="x" * 200), "event_id"),
        (_ev(de.TableApplied("master", 1, "nothex")), "table_applied.digest"),
        (_ev(de.RealServerHealth("TCP 1.2.3.4", "1.2.3.5:80", True, "m")), "real_server_health.virtual"),
        (_ev(de.RealServerHealth("TCP 1.2.3.4:80", "host:80", True, "m")), "real_server_health.real"),
        (_ev(de.AdminOverride("TCP 1.2.3.4:80", "1.2.3.5:80", de.AdminAction.WEIGHT, 70000)), "weight"),
        (
            _ev(
                de.ConfigApplied(
                    dc.Config(
                        virtuals=(dc.VirtualService(dc.Protocol.TCP, "1.2.3.4", 80, scheduler="bogus"),)
                    )
                )
            ),
            "scheduler",
        ),
        (
            _ev(de.ConfigApplied(dc.Config(virtuals=(dc.VirtualService(dc.Protocol.TCP, "01.2.3.4", 80),)))),
            "address",
        ),
        (_ev(de.DrillMarker("d", "s", "p"), wall_time=float("nan")), "wall_time"),
    ],
)
def test_invalid_events_are_refused_with_the_field_named(event: de.Event, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        validate_event(event)


def test_oversized_event_is_refused() -> None:
    e = _ev(de.DrillMarker("d", "s", "p"))
    with pytest.raises(InvalidEvent, match="bytes"):
        validate_event(e, size=2_000_000)
