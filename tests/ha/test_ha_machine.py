"""The pure HA state machine: scenarios as input lists, plus a randomized two-node safety check."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from lvs_events.agent.ha.machine import (
    Action,
    AddVips,
    Campaign,
    ElectionFailed,
    ElectionResult,
    HandoverAsked,
    HandoverResult,
    HaState,
    KeepAlive,
    KeepAliveFailed,
    KeepAliveResult,
    Notify,
    Observed,
    PeerAck,
    PeerSeen,
    RemoveVips,
    Resign,
    Role,
    SendHandover,
    SilenceVips,
    Stop,
    SwitchoverRequested,
    Takeover,
    Tick,
    can_switchover,
    step,
)
from lvs_events.agent.ha.timing import HaTiming, TimingError

T = HaTiming(
    heartbeat_interval=0.05,
    miss_limit=4,
    keepalive_interval=0.1,
    retry_deadline=0.15,
    authority=0.4,
    lease_ttl=2,
).validate()


def kinds(actions: Sequence[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def ticks(s: HaState, start: float, end: float) -> tuple[HaState, list[Action]]:
    """Tick every 20 ms from ``start`` to ``end`` (as the runner does), all actions."""
    out: list[Action] = []
    n = max(0, round((end - start) / 0.02))
    for i in range(n + 1):
        s, acts = step(s, Tick(start + (end - start) * i / max(1, n)), T)
        out += acts
    return s, out


def active(node: str = "a", term: int = 3, now: float = 10.0) -> HaState:
    s = HaState(node, leader=None, leader_term=2)
    s, acts = step(s, Tick(now), T)
    assert acts == [Campaign()]
    s, acts = step(s, ElectionResult(now, "campaign", True, term, 99, node, term, sent_at=now), T)
    assert kinds(acts) == ["AddVips", "Notify"]  # a campaign's VIPs at once, in the same step
    return s


def test_timing_rule_is_checked() -> None:
    with pytest.raises(TimingError, match="keepalive_interval \\+ 2\\*retry_deadline"):
        HaTiming(keepalive_interval=1, retry_deadline=1, authority=2.5, lease_ttl=5).validate()
    with pytest.raises(TimingError, match="lease_ttl"):
        HaTiming(authority=6, lease_ttl=5).validate()
    with pytest.raises(TimingError, match="heartbeat_interval\\*miss_limit"):
        HaTiming(heartbeat_interval=1, miss_limit=3, authority=2.5).validate()
    assert HaTiming().validate() == HaTiming()


def test_campaign_when_nobody_leads_then_vips_at_once() -> None:
    s = active()
    assert s.role is Role.ACTIVE
    assert s.term == 3
    assert s.vips


def test_standby_waits_while_peer_talks_then_takes_over_and_waits_authority() -> None:
    s = HaState("b", leader="a", leader_term=3)
    s, _ = step(s, PeerSeen(10.0, "a", "active", 3), T)
    s, acts = step(s, Tick(10.1), T)
    assert acts == []  # heard 0.1 s ago, silence is 0.2 s
    s, acts = ticks(s, 10.12, 10.25)
    assert acts == [Takeover(3)]
    s2, _ = step(s, PeerSeen(10.26, "a", "active", 3, reply=True), T)
    assert s2.acked_term == 0  # no acknowledgement while the takeover is in flight
    s, _ = step(s, ElectionResult(10.27, "takeover", True, 4, 7, "b", 4, sent_at=10.25), T)
    s, acts = step(s, Tick(10.3), T)
    assert s.role is Role.ACTIVE
    assert acts == []  # VIPs only after the authority window
    s, acts = step(s, Tick(10.4), T)
    assert acts == [KeepAlive(4, 7)]
    s, _ = step(s, KeepAliveResult(10.41, 10.4, 4, held=True), T)
    s, acts = step(s, Tick(10.27 + T.authority + T.margin - 0.001), T)
    assert not s.vips
    s, acts = step(s, Tick(10.27 + T.authority + T.margin), T)
    assert "AddVips" in kinds(acts)


def test_active_self_demotes_without_confirmation() -> None:
    s = active(now=10.0)
    s, acts = step(s, Tick(10.1), T)
    assert acts == [KeepAlive(3, 99)]
    s, _ = step(s, KeepAliveFailed(10.25, 10.1), T)
    s, acts = step(s, Tick(10.39), T)
    assert s.role is Role.ACTIVE
    s, acts = step(s, Tick(10.4), T)
    assert s.role is Role.FAULT
    assert not s.vips
    assert RemoveVips("leadership not confirmed within the authority window") in acts
    assert Notify("fault", 3, "leadership not confirmed within the authority window") in acts


def test_fault_resumes_when_etcd_confirms_the_term_again() -> None:
    s = active(now=10.0)
    s, _ = step(s, Tick(10.4), T)
    assert s.role is Role.FAULT
    s, acts = step(s, Tick(10.45), T)
    assert acts == [KeepAlive(3, 99)]  # no new election: our term may still be ours
    s2, _ = step(s, PeerSeen(10.46, "b", "active", 3, reply=True), T)
    assert s2.acked_term == 0
    s, acts = step(s, KeepAliveResult(10.5, 10.45, 3, held=True), T)
    assert s.role is Role.ACTIVE
    assert kinds(acts) == ["AddVips", "Notify"]
    lost, _ = step(replace(s, role=Role.FAULT, vips=False), KeepAliveResult(10.6, 10.55, 3, False, "b", 4), T)
    assert lost.role is Role.STANDBY
    assert lost.leader == "b"


def test_failsafe_peer_ack_keeps_the_active() -> None:
    s = active(now=10.0)
    t = 10.0
    for _ in range(40):  # etcd gone for 2 s, the peer keeps acknowledging
        t += 0.05
        s, acts = step(s, Tick(t), T)
        for a in acts:
            if isinstance(a, KeepAlive):
                s, _ = step(s, KeepAliveFailed(t + 0.15, t), T)
        s, _ = step(s, PeerAck(t + 0.001, t, 3), T)
    assert s.role is Role.ACTIVE
    assert s.vips
    s, _ = step(s, PeerAck(t, t, 2), T)  # an acknowledgement of another term does not count
    s, _ = step(s, Tick(t + T.authority + 0.01), T)
    assert s.role is Role.FAULT


def test_lost_lease_demotes_to_standby() -> None:
    s = active()
    s, _ = step(s, Tick(10.1), T)
    s, acts = step(s, KeepAliveResult(10.12, 10.1, 3, held=False, leader="b", leader_term=4), T)
    assert s.role is Role.STANDBY
    assert s.leader == "b"
    assert s.leader_term == 4
    assert kinds(acts) == ["RemoveVips", "Notify"]


def test_observed_other_leader_demotes_and_stale_news_is_ignored() -> None:
    s = active()
    s2, acts = step(s, Observed(10.1, "b", 2), T)
    assert s2 == s
    assert acts == []
    s3, acts = step(s, Observed(10.1, "b", 4), T)
    assert s3.role is Role.STANDBY
    assert kinds(acts) == ["RemoveVips", "Notify"]


def test_peer_active_with_higher_term_demotes() -> None:
    s = active()
    s, acts = step(s, PeerSeen(10.1, "b", "active", 4), T)
    assert s.role is Role.STANDBY
    assert kinds(acts) == ["RemoveVips", "Notify"]


def test_planned_switchover_both_sides() -> None:
    a = active(now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0, 5, "d"), T)
    assert can_switchover(a, "b", peer_ready=True) == ""
    assert "not caught up" in can_switchover(a, "b", peer_ready=False)
    assert "not the peer" in can_switchover(a, "c", peer_ready=True)
    a, acts = step(a, SwitchoverRequested(10.02, "b"), T)
    # make-before-break: ARP-silent first (still accepting), never removed before the successor
    assert acts == [SilenceVips("switchover"), Notify("standby", 3, "switchover"), SendHandover("b", 3)]
    assert a.role is Role.HANDING_OVER
    assert not a.vips
    assert a.silent
    b = HaState("b", leader="a", leader_term=3)
    b, acts = step(b, HandoverAsked(10.03, "a", 3), T)
    assert acts == [Takeover(3)]
    b, acts = step(b, ElectionResult(10.04, "takeover", True, 4, 8, "b", 4, sent_at=10.03), T)
    assert kinds(acts) == ["AddVips", "Notify"]  # handed over: no authority wait, not even a tick
    a, acts = step(a, HandoverResult(10.05, ok=True), T)
    assert a.role is Role.STANDBY
    assert acts == []
    assert a.silent  # lingers: packets sent with a stale ARP entry are still accepted
    a, _ = step(a, PeerSeen(10.05 + T.linger - 0.01, "b", "active", 4), T)
    a, acts = step(a, Tick(10.05 + T.linger - 0.001), T)
    assert acts == []
    a, acts = step(a, Tick(10.05 + T.linger), T)
    assert acts == [RemoveVips("switchover done")]
    assert not a.silent
    assert not a.vips


def test_failed_handover_reclaims_the_term_through_etcd() -> None:
    """The offered term is never acted on again (the successor's takeover of it may still land,
    and it adds the VIPs at once): the old active takes it over itself; one of the two wins."""
    a = active(now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0), T)
    a, _ = step(a, SwitchoverRequested(10.02, "b"), T)
    a, acts = step(a, HandoverResult(10.1, ok=False, error="timeout"), T)
    assert acts == [Takeover(3)]
    assert a.silent  # still serving what reaches it, answering no ARP
    assert not a.vips
    won, acts = step(a, ElectionResult(10.12, "takeover", True, 4, 5, "a", 4, sent_at=10.1), T)
    assert won.role is Role.ACTIVE
    assert kinds(acts) == ["AddVips", "Notify"]  # the successor's takeover of 3 cannot land now
    assert won.vips
    assert not won.silent
    lost, acts = step(a, ElectionResult(10.12, "takeover", False, 0, 0, "b", 4, sent_at=10.1), T)
    assert lost.role is Role.STANDBY
    assert acts == []
    assert lost.leader == "b"


def test_a_handover_without_an_answer_reclaims_at_its_deadline() -> None:
    a = active(now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0), T)
    a, _ = step(a, SwitchoverRequested(10.02, "b"), T)
    a, _ = step(a, PeerAck(10.03, 10.02, 3), T)  # the peer keeps acknowledging: no fault
    a, acts = step(a, Tick(a.handover_deadline), T)
    assert Takeover(3) in acts
    assert a.role is Role.STANDBY


def test_switchover_superseded_by_the_successor_lingers_then_drops() -> None:
    """etcd says the successor leads before the Handover reply came: silent, then removed."""
    a = active(now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0), T)
    a, _ = step(a, SwitchoverRequested(10.02, "b"), T)
    a, acts = step(a, Observed(10.03, "b", 4), T)
    assert a.role is Role.STANDBY
    assert "RemoveVips" not in kinds(acts)
    assert a.silent
    a, _ = step(a, PeerSeen(10.03 + T.linger - 0.01, "b", "active", 4), T)
    a, acts = step(a, Tick(10.03 + T.linger), T)
    assert acts == [RemoveVips("switchover done")]


def test_no_confirmation_while_handing_over_reclaims_too() -> None:
    """Not back to the offered term by a fault and a keepalive either: the reclaim."""
    a = active(now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0), T)
    a, _ = step(a, SwitchoverRequested(10.02, "b"), T)
    a, acts = step(a, Tick(10.0 + T.authority), T)
    assert a.role is Role.STANDBY
    assert acts == [Takeover(3)]


def test_stop_while_silent_removes() -> None:
    a = active(now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0), T)
    a, _ = step(a, SwitchoverRequested(10.02, "b"), T)
    a, _ = step(a, HandoverResult(10.05, ok=True), T)
    a, acts = step(a, Stop(10.06), T)
    assert acts == [RemoveVips("stopping")]


def test_stop_resigns_and_releases() -> None:
    s = active()
    s, acts = step(s, Stop(10.5), T)
    assert acts == [RemoveVips("stopping"), Resign(3), Notify("standby", 3, "stopping")]
    s, acts = step(s, Tick(11.0), T)
    assert acts == []


def test_election_failure_backs_off() -> None:
    s = HaState("b")
    s, acts = step(s, Tick(1.0), T)
    assert acts == [Campaign()]
    s, _ = step(s, ElectionFailed(1.1, "campaign", "unavailable"), T)
    s, acts = step(s, Tick(1.12), T)
    assert acts == []
    s, acts = step(s, Tick(1.2), T)
    assert acts == [Campaign()]


def test_a_lost_answer_that_won_is_adopted() -> None:
    s = HaState("b", leader="a", leader_term=3)
    s, _ = step(s, PeerSeen(0.7, "a", "active", 3), T)
    s, acts = step(s, Tick(1.0), T)
    assert acts == [Takeover(3)]
    s, _ = step(s, ElectionFailed(1.2, "takeover", "deadline"), T)  # it did land, though
    s, acts = ticks(s, 1.02, 1.3)
    assert acts == [Takeover(3)]
    s, _ = step(s, ElectionResult(1.31, "takeover", False, 4, 77, "b", 4, sent_at=1.3), T)
    assert s.role is Role.ACTIVE
    assert s.term == 4
    assert s.lease_id == 77
    assert s.vip_not_before >= 1.31 + T.authority


def test_restart_with_own_stale_term_takes_it_over() -> None:
    s = HaState("a", leader="a", leader_term=5)
    s, acts = step(s, Tick(1.0), T)
    assert acts == [Takeover(5)]


# --- randomized safety: two machines, a fake etcd, lossy links, a shared clock ------------------


class FakeEtcd:
    def __init__(self) -> None:
        self.leader: str | None = None
        self.term = 0
        self.lease_deadline = 0.0

    def expire(self, now: float) -> None:
        if self.leader is not None and now >= self.lease_deadline:
            self.leader = None


@pytest.mark.parametrize("seed", range(40))
def test_never_two_vip_holders(seed: int) -> None:  # noqa: PLR0912, PLR0915 -- one simulation loop
    """Two machines, random faults and planned switchovers: the VIPs are never held
    ARP-answering (AddVips) by both at once; a silent copy (SilenceVips) is not a holder."""
    rng = random.Random(seed)
    etcd = FakeEtcd()
    nodes = {"a": HaState("a"), "b": HaState("b")}
    holds = {"a": False, "b": False}
    reach_etcd = {"a": True, "b": True}
    pending: dict[str, list[object]] = {"a": [], "b": []}  # inputs delivered at the next step
    handing: dict[str, str] = {}  # successor -> the node waiting for its HandoverResult
    link_ok = True
    now = 0.0
    switchovers = 0
    for _ in range(4000):
        now += 0.01
        etcd.expire(now)
        if rng.random() < 0.01:  # fault injection
            which = rng.choice(["a", "b", "link"])
            if which == "link":
                link_ok = not link_ok
            else:
                reach_etcd[which] = not reach_etcd[which]
        for name, peer in (("a", "b"), ("b", "a")):
            s = nodes[name]
            inputs: list[object] = [*pending[name], Tick(now)]
            pending[name] = []
            if s.role is Role.ACTIVE and s.peer is not None and rng.random() < 0.01:
                inputs.append(SwitchoverRequested(now, peer))
            if link_ok and rng.random() < 0.2:  # our heartbeat to the peer, and its reply
                ps, pacts = step(nodes[peer], PeerSeen(now, name, s.role.value, s.term, reply=True), T)
                nodes[peer] = ps
                assert AddVips not in map(type, pacts)
                if RemoveVips in map(type, pacts):
                    holds[peer] = False
                inputs.append(PeerSeen(now, peer, ps.role.value, ps.term))
                inputs.append(PeerAck(now, now, ps.acked_term))
            while inputs:
                inp = inputs.pop(0)
                s, acts = step(s, inp, T)  # type: ignore[arg-type]
                if isinstance(inp, ElectionResult) and name in handing:
                    waiting = handing.pop(name)
                    pending[waiting].append(HandoverResult(now, ok=link_ok and s.role is Role.ACTIVE))
                for a in acts:
                    if isinstance(a, AddVips):
                        holds[name] = True
                    elif isinstance(a, RemoveVips | SilenceVips):
                        holds[name] = False
                    elif isinstance(a, SendHandover):
                        switchovers += 1
                        if link_ok:
                            handing[peer] = name
                            pending[peer].append(HandoverAsked(now, name, a.term))
                        else:
                            pending[name].append(HandoverResult(now, ok=False, error="unreachable"))
                    elif isinstance(a, Campaign | Takeover):
                        if not reach_etcd[name]:
                            inputs.append(ElectionFailed(now + 0.01, "x", "down"))
                            continue
                        ok = (
                            (etcd.leader is None)
                            if isinstance(a, Campaign)
                            else (etcd.leader is not None and etcd.term == a.stale_term)
                        )
                        if ok:
                            etcd.term += 1
                            etcd.leader = name
                            etcd.lease_deadline = now + T.lease_ttl
                        inputs.append(
                            ElectionResult(
                                now + 0.005,
                                "campaign" if isinstance(a, Campaign) else "takeover",
                                ok,
                                etcd.term,
                                1,
                                etcd.leader,
                                etcd.term,
                                sent_at=now,
                            )
                        )
                    elif isinstance(a, KeepAlive):
                        if not reach_etcd[name]:
                            inputs.append(KeepAliveFailed(now + 0.01, now))
                        elif etcd.leader == name and etcd.term == a.term:
                            etcd.lease_deadline = now + T.lease_ttl
                            inputs.append(KeepAliveResult(now + 0.005, now, a.term, True))
                        else:
                            inputs.append(
                                KeepAliveResult(now + 0.005, now, a.term, False, etcd.leader, etcd.term)
                            )
            nodes[name] = s
            if name in handing and not s.inflight:  # the peer refused the handover (busy)
                pending[handing.pop(name)].append(HandoverResult(now, ok=False, error="busy"))
            assert not (holds["a"] and holds["b"]), f"two VIP holders at t={now:.2f} (seed {seed})"
    assert switchovers > 0


def test_a_failed_handover_takeover_does_not_make_a_later_one_handed() -> None:
    """Found by the randomized check: a handover whose takeover failed left its mark, and a later
    takeover for silence added the VIPs at once (while the old active could still hold them)."""
    b = HaState("b", leader="a", leader_term=3)
    b, _ = step(b, PeerSeen(10.0, "a", "active", 3), T)
    b, acts = step(b, HandoverAsked(10.01, "a", 3), T)
    assert acts == [Takeover(3)]
    b, _ = step(b, ElectionFailed(10.1, "takeover", "unavailable"), T)
    b, acts = step(b, Tick(10.3), T)  # the active is silent now: an ordinary takeover
    assert acts == [Takeover(3)]
    b, acts = step(b, ElectionResult(10.31, "takeover", True, 4, 5, "b", 4, sent_at=10.3), T)
    assert acts == []
    assert b.vip_not_before >= 10.31 + T.authority


def test_back_from_a_partition_no_takeover_of_a_leader_never_heard() -> None:
    """The old active, cut off, let go (fault); the peer took over. Healed, it learns the new
    leader from etcd before the peer link reconnects: its peer is "silent", but it never heard
    this leader, so it does not take over (that flapped the VIPs: term +2 or +3 after a heal)."""
    a = active(node="a", term=3, now=10.0)
    a, _ = step(a, PeerSeen(10.01, "b", "standby", 0), T)
    a, _ = step(a, Tick(10.0 + T.authority), T)
    assert a.role is Role.FAULT
    a, _ = step(a, Observed(15.0, "b", 4), T)  # healed: etcd answers again
    assert a.role is Role.STANDBY
    assert a.lease_id == 0  # the old lease is gone: it acknowledges the new active again
    a, acts = step(a, Tick(15.01), T)
    assert acts == []  # the peer was last heard 5 s ago, as a standby
    a, _ = step(a, PeerSeen(15.3, "b", "active", 4), T)  # the link is back
    a, acts = ticks(a, 15.03, 15.31 + T.silence)
    assert acts == [Takeover(4)]  # heard active, then silent: a takeover as always


def test_a_leader_never_heard_is_left_to_its_lease() -> None:
    b = HaState("b", leader="a", leader_term=3)
    b, acts = step(b, Tick(1.0), T)
    assert acts == []
    b, acts = step(b, Observed(3.0, None, 3), T)  # its lease expired: no leader
    b, acts = step(b, Tick(3.01), T)
    assert acts == [Campaign()]


def test_a_fault_whose_term_etcd_still_holds_waits_for_its_keepalive() -> None:
    """etcd answers again and still names us: no takeover of our own term (a new term for
    nothing), the keepalive makes us active again."""
    a = active(node="a", term=3, now=10.0)
    a, _ = step(a, Tick(10.0 + T.authority), T)
    assert a.role is Role.FAULT
    a, _ = step(a, Observed(11.0, "a", 3), T)
    assert a.role is Role.FAULT
    a, acts = step(a, Tick(11.01), T)
    assert acts == [KeepAlive(3, 99)]


def test_a_stall_of_our_own_is_not_the_peer_s_silence() -> None:
    """No tick for 0.3 s (the host starved us of CPU): the peer's heartbeats sent meanwhile are
    still queued, so its silence counts from our first tick after the stall."""
    b = HaState("b", leader="a", leader_term=3)
    b, _ = step(b, PeerSeen(10.0, "a", "active", 3), T)
    b, acts = ticks(b, 10.0, 10.1)
    assert acts == []
    b, acts = step(b, Tick(10.4), T)  # 0.3 s later
    assert acts == []
    b, acts = ticks(b, 10.42, 10.41 + T.silence)
    assert acts == [Takeover(3)]  # still nothing heard: silent for `silence` of our running time
