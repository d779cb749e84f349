"""CheckerHealth: folded per node; the table follows a node whose checker is not degraded."""

from __future__ import annotations

import pytest

from lvs_events.domain.config import (
    CheckSettings,
    Config,
    GlobalSettings,
    Protocol,
    RealServer,
    VirtualService,
)
from lvs_events.domain.events import (
    CheckerHealth,
    ConfigApplied,
    Event,
    Leadership,
    LeadershipChange,
    Payload,
    RealServerHealth,
)
from lvs_events.domain.render import TableRenderer, followed_health, render
from lvs_events.domain.state import State, checker_degraded, fold_all
from lvs_events.domain.validate import validate_event
from lvs_events.errors import InvalidEvent

V = VirtualService(
    Protocol.TCP,
    "203.0.113.10",
    80,
    reals=(RealServer("192.0.2.11", 80), RealServer("192.0.2.12", 80)),
    check=CheckSettings(checktype="negotiate"),
)
CFG = Config(GlobalSettings(), (V,))
R1, R2 = "192.0.2.11:80", "192.0.2.12:80"


def log(*payloads: Payload) -> list[Event]:
    out = [Event("e0", "c", "lb1", "a", "", 1000.0, ConfigApplied(CFG), revision=1)]
    for i, p in enumerate(payloads, start=2):
        out.append(Event(f"e{i}", "c", "lb1", "a", "", 1000.0 + i, p, revision=i))
    return out


def up_in_table(state: State) -> set[str]:
    (svc,) = render(state).services
    return {f"{d.address}:{d.port}" for d in svc.dests if d.weight > 0}


BASE = (
    Leadership("lb1", LeadershipChange.ACQUIRED, 1),
    RealServerHealth(V.key, R1, True, "lb1"),
    RealServerHealth(V.key, R2, True, "lb1"),
    RealServerHealth(V.key, R1, True, "lb2"),
    RealServerHealth(V.key, R2, False, "lb2"),  # lb2 sees R2 down, the active lb1 does not
)


def test_domain_the_active_view_is_followed_while_its_checker_is_healthy() -> None:
    s = fold_all(State(), log(*BASE))
    assert up_in_table(s) == {R1, R2}
    s = fold_all(State(), log(*BASE, CheckerHealth("lb1", degraded=False)))
    assert up_in_table(s) == {R1, R2}


def test_domain_a_degraded_active_checker_gives_way_to_the_healthy_view() -> None:
    s = fold_all(State(), log(*BASE, CheckerHealth("lb1", degraded=True, behind=True, stretch=4.0)))
    assert checker_degraded(s, "lb1")
    assert not checker_degraded(s, "lb2")
    assert up_in_table(s) == {R1}
    obs = followed_health(s, V.key, R2)
    assert obs is not None
    assert not obs.up
    # recovered: the active's view again
    s = fold_all(
        s, [Event("e99", "c", "lb1", "a", "", 2000.0, CheckerHealth("lb1", degraded=False), revision=99)]
    )
    assert up_in_table(s) == {R1, R2}


def test_domain_with_every_checker_degraded_the_active_view_stays() -> None:
    s = fold_all(
        State(),
        log(*BASE, CheckerHealth("lb1", degraded=True), CheckerHealth("lb2", degraded=True)),
    )
    assert up_in_table(s) == {R1, R2}


def test_domain_a_server_only_the_degraded_node_checked_keeps_its_view() -> None:
    s = fold_all(
        State(),
        log(
            Leadership("lb1", LeadershipChange.ACQUIRED, 1),
            RealServerHealth(V.key, R1, True, "lb1"),
            CheckerHealth("lb1", degraded=True),
        ),
    )
    assert up_in_table(s) == {R1}


def test_domain_checker_health_re_renders_everything_incrementally() -> None:
    events = log(*BASE)
    s = fold_all(State(), events)
    renderer = TableRenderer(s)
    assert renderer.digest() == render(s).digest()
    s2 = fold_all(
        s, [Event("x", "c", "lb1", "a", "", 3000.0, CheckerHealth("lb1", degraded=True), revision=50)]
    )
    # CheckerHealth names no real server: it changes which view is followed (a new renderer)
    from lvs_events.domain.render import touched_reals

    assert touched_reals(Event("x", "c", "lb1", "a", "", 1.0, CheckerHealth("lb1", True))) is None
    assert TableRenderer(s2).digest() == render(s2).digest() != renderer.digest()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (CheckerHealth("", True), "checker_health.node"),
        (CheckerHealth("lb1", True, stretch=0.5), "checker_health.stretch"),
        (CheckerHealth("lb1", True, capacity=float("nan")), "checker_health.capacity"),
        (CheckerHealth("lb1", False, behind=True), "checker_health.degraded"),
        (CheckerHealth("lb1", True, inconclusive=-1), "checker_health.inconclusive"),
    ],
)
def test_domain_checker_health_is_validated(payload: CheckerHealth, field: str) -> None:
    with pytest.raises(InvalidEvent, match=field):
        validate_event(Event("e1", "c", "lb1", "lvs-agent", "", 1000.0, payload))


def test_domain_valid_checker_health_passes() -> None:
    validate_event(
        Event(
            "e1",
            "c",
            "lb1",
            "lvs-agent",
            "",
            1000.0,
            CheckerHealth("lb1", True, True, 3.2, 3.2, 310.0, 1000.0, 4),
        )
    )
