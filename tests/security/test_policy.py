"""The policy, exhaustively: every principal x every action against the table of
docs/security.md, written here as literal rows rather than derived from the policy module."""

from __future__ import annotations

import itertools

import pytest

from lvs_events.security.policy import Call, PublishEvent, Rpc, decide, show, stamp
from lvs_events.security.principal import UNVERIFIED, Principal, Role

PEER = "lb2"  # the serving agent's configured peer
PRINCIPALS = {
    "director lb1": Principal(Role.DIRECTOR, "lb1"),
    "director lb2": Principal(Role.DIRECTOR, "lb2"),  # the configured peer
    "operator": Principal(Role.OPERATOR, "alice"),
    "reader": Principal(Role.READER, "monitor"),
    "witness": Principal(Role.WITNESS, "w1"),
    "unverified": UNVERIFIED,
    "nobody": None,
}
ALL = {*PRINCIPALS} - {"nobody"}

# action label -> who may do it. "self" actions name the principal's own node, "other" another one.
TABLE: dict[str, set[str]] = {
    "call Publish": {"director lb1", "director lb2", "operator", "unverified"},
    "call Subscribe": ALL,
    "call GetState": ALL,
    "call GetStateChunks": ALL,
    "call GetLeader": ALL,
    "call Observe": ALL,
    "call Status": ALL,
    "call Switchover": {"operator", "unverified"},
    # election writes: the method without a node (interceptor, streaming), for itself, for another
    "call Campaign": {"director lb1", "director lb2", "unverified"},
    "call Campaign self": {"director lb1", "director lb2", "unverified"},
    "call Campaign other": {"unverified"},
    "call Takeover": {"director lb1", "director lb2", "unverified"},
    "call Takeover self": {"director lb1", "director lb2", "unverified"},
    "call Takeover other": {"unverified"},
    "call KeepAlive": {"director lb1", "director lb2", "unverified"},
    "call KeepAlive self": {"director lb1", "director lb2", "unverified"},
    "call KeepAlive other": {"unverified"},
    "call Resign": {"director lb1", "director lb2", "unverified"},
    "call Resign self": {"director lb1", "director lb2", "unverified"},
    "call Resign other": {"unverified"},
    # the Peer service of an agent whose peer is lb2
    "call Heartbeat": {"director lb2", "unverified"},
    "call Heartbeat self": {"director lb2", "unverified"},
    "call Heartbeat other": {"unverified"},
    "call Heartbeat no-peer": {"unverified"},
    "call Handover": {"director lb2", "unverified"},
    "call Handover self": {"director lb2", "unverified"},
    "call Handover other": {"unverified"},
    "call Handover no-peer": {"unverified"},
    # events of a Publish stream
    "publish RealServerHealth self": {"director lb1", "director lb2", "unverified"},
    "publish RealServerHealth other": {"unverified"},
    "publish RealServerHealth none": {"unverified"},
    "publish TableApplied self": {"director lb1", "director lb2", "unverified"},
    "publish TableApplied other": {"unverified"},
    "publish DataplaneDrift self": {"director lb1", "director lb2", "unverified"},
    "publish DataplaneDrift other": {"unverified"},
    "publish LogIntegrity self": {"director lb1", "director lb2", "unverified"},
    "publish LogIntegrity other": {"unverified"},
    "publish CheckerHealth self": {"director lb1", "director lb2", "unverified"},
    "publish CheckerHealth other": {"unverified"},
    "publish ConfigApplied": {"director lb1", "director lb2", "operator", "unverified"},
    "publish ConfigRejected": {"director lb1", "director lb2", "unverified"},
    "publish AdminOverride": {"operator", "unverified"},
    "publish DrillMarker": {"operator", "unverified"},
    "publish Leadership": {"unverified"},
    "publish Bogus": {"unverified"},
}


def _name(p: Principal | None) -> str:
    return p.name if p is not None else "nobody"


def action(label: str, p: Principal | None) -> Call | PublishEvent:
    words = label.split()
    which = words[2] if len(words) > 2 else ""
    node = {"self": _name(p), "other": "lb9", "": None, "no-peer": _name(p), "none": None}[which]
    if words[0] == "call":
        rpc = next(r for r in Rpc if r.short == words[1])
        return Call(rpc, node, "" if which == "no-peer" else PEER)
    return PublishEvent(words[1], node)


def test_the_table_covers_every_rpc() -> None:
    assert {r.short for r in Rpc} == {label.split()[1] for label in TABLE if label.startswith("call")}


@pytest.mark.parametrize(("who", "label"), list(itertools.product(PRINCIPALS, TABLE)))
def test_every_principal_and_action(who: str, label: str) -> None:
    p = PRINCIPALS[who]
    d = decide(p, action(label, p))
    assert d.allowed == (who in TABLE[label]), d.reason
    assert d.reason


@pytest.mark.parametrize(
    ("principal", "act", "reason"),
    [
        (
            Principal(Role.DIRECTOR, "slave"),
            PublishEvent("RealServerHealth", "master"),
            "director 'slave' may not publish health as 'master'",
        ),
        (
            Principal(Role.DIRECTOR, "lb1"),
            PublishEvent("TableApplied", "lb2"),
            "director 'lb1' may not publish TableApplied as 'lb2'",
        ),
        (
            Principal(Role.READER, "monitor"),
            Call(Rpc.PUBLISH),
            "reader 'monitor' may not call Publish (allowed to: directors, operators)",
        ),
        (
            Principal(Role.OPERATOR, "alice"),
            Call(Rpc.TAKEOVER),
            "operator 'alice' may not call Takeover (allowed to: directors)",
        ),
        (
            Principal(Role.DIRECTOR, "lb1"),
            PublishEvent("Leadership"),
            "director 'lb1' may not publish Leadership: only the coordinator's election writes it",
        ),
        (
            Principal(Role.DIRECTOR, "lb1"),
            Call(Rpc.HEARTBEAT, "lb1", ""),
            "director 'lb1' may not call Heartbeat: this agent has no configured peer",
        ),
        (
            Principal(Role.DIRECTOR, "lb1"),
            PublishEvent("RealServerHealth", "\x1b[2Jlb2"),
            "director 'lb1' may not publish health as '\\x1b[2Jlb2'",
        ),
    ],
)
def test_refusals_say_who_may_not_do_what(
    principal: Principal, act: Call | PublishEvent, reason: str
) -> None:
    d = decide(principal, act)
    assert not d.allowed
    assert d.reason == reason


def test_no_principal_is_refused_with_what_the_certificate_must_say() -> None:
    d = decide(None, Call(Rpc.STATUS))
    assert not d.allowed
    assert "O=lvs-events:<role>, CN=<name>" in d.reason


def test_stamp_records_the_verified_identity_never_the_claimed_one() -> None:
    assert stamp(Principal(Role.DIRECTOR, "lb1"), "lvs-agent", "lb2") == ("lb1", "lb1")
    assert stamp(Principal(Role.OPERATOR, "alice"), "root", "lb1") == ("alice", "alice")


def test_stamp_marks_unverified_callers_and_escapes_their_claims() -> None:
    assert stamp(UNVERIFIED, "alice", "lb1") == ("unverified:alice", "lb1")
    actor, _ = stamp(UNVERIFIED, "evil\x1b]0;pwned\x07\u202e", "lb1")
    assert actor == "unverified:evil\\x1b]0;pwned\\x07\\u202e"
    assert actor.isprintable()
    long, _ = stamp(UNVERIFIED, "\x00" * 300, "lb1")
    assert len(long) <= 256
    assert long.endswith("...")


def test_show_leaves_printable_text_alone_and_cuts_long_text() -> None:
    assert show("lb1.example.net") == "lb1.example.net"
    assert show("x" * 70, 64) == "x" * 64 + "..."
