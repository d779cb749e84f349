"""The pure HA state machine: its timing rule and a randomized two-node safety check.

The rule-by-rule scenarios are data-driven: ``testdata/*.txt``, run by ``test_ha_datadriven.py``.
"""

from __future__ import annotations

import random

import pytest

from lvs_events.agent.ha.machine import (
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
    PeerAck,
    PeerSeen,
    RemoveVips,
    Role,
    SendHandover,
    SilenceVips,
    SwitchoverRequested,
    Takeover,
    Tick,
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


def test_timing_rule_is_checked() -> None:
    with pytest.raises(TimingError, match="keepalive_interval \\+ 2\\*retry_deadline"):
        HaTiming(keepalive_interval=1, retry_deadline=1, authority=2.5, lease_ttl=5).validate()
    with pytest.raises(TimingError, match="lease_ttl"):
        HaTiming(authority=6, lease_ttl=5).validate()
    with pytest.raises(TimingError, match="heartbeat_interval\\*miss_limit"):
        HaTiming(heartbeat_interval=1, miss_limit=3, authority=2.5).validate()
    assert HaTiming().validate() == HaTiming()


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
