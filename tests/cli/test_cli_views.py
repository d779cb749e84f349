"""The CLI's pure views: event lines, JSON lines, filters, status."""

from __future__ import annotations

import json

from immutables import Map

from lvs_events.cli import views
from lvs_events.cli.main import parse_duration, parse_since
from lvs_events.domain.config import Config
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    Event,
    Payload,
    RealServerHealth,
    TableApplied,
)
from lvs_events.domain.state import NodeStatus, Observation, State


def _e(payload: Payload, origin: str = "master", reason: str = "") -> Event:
    return Event("01J0", "c1", origin, "alice", reason, 1_764_429_600.5, payload, revision=42)


def test_event_line_has_revision_time_node_actor_type_summary_and_reason() -> None:
    line = views.event_line(
        _e(
            AdminOverride("TCP 203.0.113.10:80", "192.0.2.13:80", AdminAction.DRAIN),
            origin="ops",
            reason="kernel upgrade",
        )
    )
    assert line.split()[:5] == ["42", "2025-11-29T15:20:00.500Z", "ops", "alice", "AdminOverride"]
    assert "drain TCP 203.0.113.10:80 -> 192.0.2.13:80" in line
    assert "reason='kernel upgrade'" in line


def test_health_line_carries_the_evidence() -> None:
    line = views.event_line(
        _e(
            RealServerHealth(
                "TCP 203.0.113.10:80", "192.0.2.11:80", False, "slave", "negotiate", "HTTP/1.1 503", 12.25
            )
        )
    )
    assert "192.0.2.11:80 DOWN seen by slave [negotiate (HTTP/1.1 503), 12.2ms]" in line


def test_json_lines_are_valid_json_with_the_payload() -> None:
    doc = json.loads(views.event_json(_e(ConfigApplied(Config(source="ldirectord.cf")))))
    assert doc["revision"] == 42
    assert doc["type"] == "ConfigApplied"
    assert doc["payload"]["config"]["source"] == "ldirectord.cf"
    assert doc["time"].endswith("Z")


def test_status_shows_lag_sync_and_disagreeing_views() -> None:
    s = State(
        cluster="c1",
        nodes=Map({"master": NodeStatus(10, "a" * 64, 11, 0.0), "slave": NodeStatus(7, "b" * 64, 9, 0.0)}),
        health=Map(
            {
                ("TCP 203.0.113.10:80", "192.0.2.11:80"): Map(
                    {"master": Observation(True, 3, 0.0), "slave": Observation(False, 4, 0.0)}
                )
            }
        ),
    )
    text = views.status_text(s, head=12, now_digest="a" * 64, now=0.0)
    assert "master" in text
    assert "slave" in text
    master = next(line for line in text.splitlines() if line.startswith("master"))
    slave = next(line for line in text.splitlines() if line.startswith("slave"))
    # LAG is head - applied for every node, in sync or not
    assert master.split()[1:5] == ["10", "2", "a" * 12, "yes"]
    assert slave.split()[1:5] == ["7", "5", "b" * 12, "no"]
    assert "192.0.2.11:80: master=up, slave=down" in text


def test_status_shows_when_each_node_last_reported_and_which_is_silent() -> None:
    s = State(
        cluster="c1",
        nodes=Map(
            {"master": NodeStatus(10, "a" * 64, 11, 1000.0), "slave": NodeStatus(10, "a" * 64, 9, 960.0)}
        ),
    )
    text = views.status_text(s, head=11, now_digest="a" * 64, now=1002.0, silent_after=30.0)
    master = next(line for line in text.splitlines() if line.startswith("master"))
    slave = next(line for line in text.splitlines() if line.startswith("slave"))
    assert master.endswith("2s ago")
    assert "SILENT" in slave
    assert "42s ago" in slave
    nodes = views.node_views(s, 11, "a" * 64, 1002.0, 30.0)
    assert [(n.node, n.silent, n.lag) for n in nodes] == [("master", False, 1), ("slave", True, 1)]


def test_control_characters_from_the_log_are_printed_escaped() -> None:
    ev = Event(
        "01J0",
        "c1",
        "ops\x07",
        "\x1b[31mmallory",
        "why\nnot",
        1_764_429_600.5,
        AdminOverride("TCP 203.0.113.10:80", "192.0.2.13:80", AdminAction.DRAIN),
        revision=1,
    )
    line = views.event_line(ev)
    assert line.isprintable()
    assert "\\x1b[31mmallory" in line
    assert "ops\\x07" in line
    assert views.clean("caf\u00e9 \u202e") == "caf\u00e9 \\u202e"


def test_durations_and_times() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("2h") == 7200
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2025-11-29T15:20:00Z", now=0) == 1_764_429_600.0


def test_table_applied_summary() -> None:
    assert (
        views.summary(_e(TableApplied("slave", 9, "ab" * 32)))
        == "slave applied revision 9 digest abababababab"
    )
