"""The HA decision logic of one director, as a pure state machine (cf. google/seesaw's engine).

``step(state, input, timing) -> (state, actions)``: no clock, no I/O. The shell
(:mod:`lvs_events.agent.ha.runner`) feeds it inputs (ticks, election results from the coordinator, peer
heartbeats) stamped with a monotonic ``now`` and carries out the actions it returns (campaign,
take over, keep the lease alive, add/remove the VIPs, run the notify hooks, hand over).

Who decides: only etcd (through the coordinator) makes a node active; a node is ACTIVE only after
an election call returned ``acquired``. The heartbeat with the peer only makes two things faster:
a standby that hears nothing from the active for ``timing.silence`` asks etcd to *take over* (which
succeeds only if the leader key still holds the term it saw), and an active that cannot reach etcd
keeps going while its peer acknowledges its term (failsafe).

Why there is never a second VIP holder (see ``docs/failover.md``):

1. An active keeps the VIPs only until ``authority`` seconds after its last *confirmation*: the
   send time of the last keepalive that found the leader key holding its term, or of the last
   heartbeat whose reply acknowledged its term. Then it removes them by itself (fault).
2. A standby stops acknowledging the active's term before it asks for a takeover, and a
   keepalive sent after the takeover is refused. So every confirmation the old active can still
   hold was sent before the takeover's answer, and it runs out within ``authority`` of it.
3. A node that took over adds the VIPs only ``authority`` after the answer (1 and 2 make the old
   active let go by then), unless the old active handed over explicitly: it had made its VIPs
   ARP-silent first (see 5).
4. A node elected by create-if-absent (no leader key) adds them at once: the key is absent only
   after a resign (the VIPs were removed first) or after the lease expired (``authority <=
   lease_ttl``: the old active let go before).
5. Planned switchover is make-before-break without two ARP answerers: the active first makes its
   VIPs *silent* (``SilenceVips``: still accepted, never answered in ARP nor announced; the shell
   moves them to ``lo`` with ``arp_ignore``/``arp_announce`` set), then hands over; the successor
   adds and announces them at once; the old node drops the silent copy ``timing.linger`` after
   the handover completed (in-flight packets sent with a stale ARP entry are still accepted). The
   VIPs are held ARP-answering (``vips``) by at most one node; ``silent`` is not a holder. A node
   never acts again on a term it offered: if the handover fails or times out, it takes the term
   over itself (``_reclaim``); etcd lets only one of the two takeovers of that term succeed.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from lvs_events.agent.ha.timing import HaTiming

__all__ = [
    "Action",
    "AddVips",
    "Campaign",
    "ElectionFailed",
    "ElectionResult",
    "HaState",
    "HandoverAsked",
    "HandoverResult",
    "Input",
    "KeepAlive",
    "KeepAliveFailed",
    "KeepAliveResult",
    "Notify",
    "Observed",
    "PeerAck",
    "PeerSeen",
    "PeerView",
    "RemoveVips",
    "Resign",
    "Role",
    "SendHandover",
    "SilenceVips",
    "Stop",
    "SwitchoverRequested",
    "Takeover",
    "Tick",
    "ack_for",
    "authority_until",
    "can_switchover",
    "step",
]

NEVER = -math.inf
HANDOVER_RPC_DEADLINES = 4  # Peer.Handover may take this many retry deadlines (takeover, VIPs)


class Role(enum.StrEnum):
    STANDBY = "standby"
    ACTIVE = "active"
    HANDING_OVER = "handing-over"  # planned switchover: VIPs removed, waiting for the successor
    FAULT = "fault"  # let go because leadership could not be confirmed in time
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PeerView:
    node: str
    role: str
    term: int
    revision: int
    digest: str
    seen_at: float


@dataclass(frozen=True, slots=True)
class HaState:
    node: str
    role: Role = Role.STANDBY
    term: int = 0  # our term while ACTIVE / HANDING_OVER
    lease_id: int = 0
    leader: str | None = None  # etcd's leader as last learned
    leader_term: int = 0  # its term (or the term counter when there is no leader)
    vips: bool = False  # the VIPs are (being) held, ARP-answering: at most one node
    silent: bool = False  # the VIPs are held ARP-silent (accepted, not answered): a switchover
    silent_until: float = NEVER  # when the silent copy is dropped
    vip_not_before: float = 0.0
    vip_after_confirm: float = NEVER  # VIPs only after a keepalive sent later than this confirms
    confirmed_etcd: float = NEVER  # send time of the last keepalive that confirmed our term
    confirmed_peer: float = NEVER  # send time of the last heartbeat the peer acknowledged
    keepalive_due: float = 0.0
    keepalive_inflight: bool = False
    inflight: str = ""  # election call in flight: "campaign" | "takeover" | ""
    election_not_before: float = 0.0
    handover_term: int = 0  # standby: the term the active handed over to us (VIPs already gone)
    handover_deadline: float = 0.0
    peer: PeerView | None = None
    heard_term: int = 0  # the highest term we heard the peer claim as active
    acked_term: int = 0  # what we acknowledged in reply to the peer's last heartbeat
    acked_at: float = NEVER  # when we last acknowledged an active peer's term
    since: float = 0.0  # when this node started: a peer never heard from is silent from here
    last_tick: float = NEVER
    awake_since: float = NEVER  # the first tick after a stall of ours (see peer_silent)
    reason: str = ""  # why the last role change happened (status, logs)
    changed_at: float = 0.0


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class Observed:
    """etcd's leader (None: no leader key) and term, from Observe / GetLeader."""

    now: float
    leader: str | None
    term: int


@dataclass(frozen=True, slots=True)
class ElectionResult:
    now: float
    op: str  # "campaign" | "takeover"
    acquired: bool
    term: int  # ours when acquired
    lease_id: int
    leader: str | None  # the leader after the call
    leader_term: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class ElectionFailed:
    now: float
    op: str
    error: str


@dataclass(frozen=True, slots=True)
class KeepAliveResult:
    now: float
    sent_at: float
    term: int  # the term the keepalive was for
    held: bool
    leader: str | None = None
    leader_term: int = 0


@dataclass(frozen=True, slots=True)
class KeepAliveFailed:
    now: float
    sent_at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """The peer's heartbeat (``reply=True``: it asked, answer with ``state.acked_term``) or its
    reply to ours."""

    now: float
    node: str
    role: str
    term: int
    revision: int = 0
    digest: str = ""
    reply: bool = False


@dataclass(frozen=True, slots=True)
class PeerAck:
    """The peer answered a heartbeat we sent at ``sent_at``, acknowledging ``ack_term`` (0: none)."""

    now: float
    sent_at: float
    ack_term: int


@dataclass(frozen=True, slots=True)
class SwitchoverRequested:
    now: float
    to: str  # "" = the peer


@dataclass(frozen=True, slots=True)
class HandoverAsked:
    """The active told us (standby) it released the VIPs of ``term``: take over now."""

    now: float
    from_node: str
    term: int


@dataclass(frozen=True, slots=True)
class HandoverResult:
    now: float
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    now: float


Input = (
    Tick
    | Observed
    | ElectionResult
    | ElectionFailed
    | KeepAliveResult
    | KeepAliveFailed
    | PeerSeen
    | PeerAck
    | SwitchoverRequested
    | HandoverAsked
    | HandoverResult
    | Stop
)

# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Campaign:
    pass


@dataclass(frozen=True, slots=True)
class Takeover:
    stale_term: int


@dataclass(frozen=True, slots=True)
class KeepAlive:
    term: int
    lease_id: int


@dataclass(frozen=True, slots=True)
class Resign:
    term: int


@dataclass(frozen=True, slots=True)
class AddVips:
    term: int


@dataclass(frozen=True, slots=True)
class RemoveVips:
    """Remove the VIPs, held or silent."""

    reason: str


@dataclass(frozen=True, slots=True)
class SilenceVips:
    """Keep accepting traffic for the VIPs but stop answering ARP / NDP for them and announcing
    them (planned switchover: the old node keeps what still reaches it while the successor
    announces)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Notify:
    hook: str  # "active" | "standby" | "fault"
    term: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendHandover:
    to: str
    term: int


Action = Campaign | Takeover | KeepAlive | Resign | AddVips | RemoveVips | SilenceVips | Notify | SendHandover


# --- helpers ----------------------------------------------------------------------------------


def authority_until(s: HaState, t: HaTiming) -> float:
    """Until when an active may act without a new confirmation."""
    return max(s.confirmed_etcd, s.confirmed_peer) + t.authority


def peer_silent(s: HaState, now: float, t: HaTiming) -> bool:
    """Silent for ``silence`` of our own running time: a stall of ours (no tick for a while, the
    host starved of CPU) restarts the count, since what the peer sent meanwhile is still queued."""
    last = s.since if s.peer is None else s.peer.seen_at
    return now - max(last, s.awake_since) >= t.silence


def ack_for(s: HaState, role: str, term: int) -> int:
    """The term we acknowledge in reply to a heartbeat from a peer claiming ``role``/``term``.

    A standby acknowledges an active it is not about to replace; the acknowledgement lets the
    active keep its VIPs while etcd is unreachable (failsafe), so it is never given while an
    election call of ours is in flight or once we hold a term ourselves; and a node that wins an
    election adds its VIPs no earlier than ``authority`` after its last acknowledgement.
    """
    standby = s.role in (Role.STANDBY, Role.FAULT) and not s.inflight and not s.lease_id
    if standby and role == Role.ACTIVE.value and term >= s.leader_term and term > 0:
        return term
    return 0


def can_switchover(s: HaState, to: str, peer_ready: bool) -> str:
    """ "" when a planned switchover to ``to`` ("" = the peer) may start, else why not."""
    if s.role is not Role.ACTIVE:
        return f"this node is {s.role.value}, not active"
    if s.peer is None:
        return "no peer heard from"
    if to and to != s.peer.node:
        return f"{to!r} is not the peer ({s.peer.node!r})"
    if s.peer.role not in (Role.STANDBY.value, Role.FAULT.value):
        return f"the peer is {s.peer.role}, not standby"
    if not peer_ready:
        return "the peer is not caught up (revision or table digest differs)"
    return ""


def _demote(
    s: HaState, now: float, role: Role, hook: str, reason: str, *, t: HaTiming
) -> tuple[HaState, list[Action]]:
    actions: list[Action] = []
    # a silent copy (a switchover under way) lingers when we step down to standby: the successor
    # is announcing; a fault drops it with the rest
    silent = s.silent and role is not Role.FAULT
    if s.vips or (s.silent and not silent):
        actions.append(RemoveVips(reason))
    actions.append(Notify(hook, s.term, reason))
    return (
        replace(
            s,
            role=role,
            vips=False,
            silent=silent,
            silent_until=min(s.silent_until, now + t.linger) if silent else NEVER,
            # FAULT keeps its term and lease: a later keepalive that finds them still held
            # (nobody took over meanwhile) makes it active again without a new election
            lease_id=s.lease_id if role is Role.FAULT else 0,
            keepalive_inflight=False,
            confirmed_etcd=NEVER,
            confirmed_peer=NEVER,
            vip_after_confirm=NEVER,
            reason=reason,
            changed_at=now,
        ),
        actions,
    )


def _add_if_due(s: HaState, now: float) -> tuple[HaState, list[Action]]:
    """An active adds (and announces) its VIPs once its wait is over; a silent copy becomes held."""
    if (
        s.role is Role.ACTIVE
        and not s.vips
        and now >= s.vip_not_before
        and s.confirmed_etcd >= s.vip_after_confirm
    ):
        return replace(s, vips=True, silent=False, silent_until=NEVER, changed_at=now), [
            AddVips(s.term),
            Notify("active", s.term, s.reason),
        ]
    return s, []


def _reclaim(s: HaState, now: float, why: str) -> tuple[HaState, list[Action]]:
    """A handover that failed or timed out: we never act on the offered term again. Whether the
    successor's takeover of it landed (or still will) is unknown, and it adds the VIPs at once
    when it does. So we take the term over ourselves: etcd lets exactly one of the two takeovers
    of it succeed; if ours does, the successor's fails, and we may add at once (``handover_term``
    marks the takeover as handed). The silent copy keeps serving meanwhile."""
    return replace(
        s,
        role=Role.STANDBY,
        lease_id=0,
        keepalive_inflight=False,
        confirmed_etcd=NEVER,
        confirmed_peer=NEVER,
        inflight="takeover",
        handover_term=s.term,
        reason=f"reclaiming term {s.term}: {why}",
        changed_at=now,
    ), [Takeover(s.term)]


def _linger(s: HaState, now: float, t: HaTiming) -> HaState:
    """The handover is over (or someone else leads): the silent copy goes ``linger`` from now."""
    return replace(s, silent_until=min(s.silent_until, now + t.linger)) if s.silent else s


def _learn(s: HaState, leader: str | None, term: int) -> HaState:
    if term < s.leader_term:
        return s  # older news
    return replace(s, leader=leader, leader_term=term)


# --- the machine ------------------------------------------------------------------------------


def step(s: HaState, inp: Input, t: HaTiming) -> tuple[HaState, list[Action]]:  # noqa: PLR0911, PLR0912
    """One input in, the next state and the actions to carry out (in order) out."""
    if s.role is Role.STOPPED:
        if isinstance(inp, ElectionResult) and inp.acquired:
            return s, [Resign(inp.term)]  # won after we stopped: give it back at once
        return s, []
    if isinstance(inp, Tick):
        return _tick(s, inp.now, t)
    if isinstance(inp, Observed):
        return _observed(s, inp, t)
    if isinstance(inp, ElectionResult):
        return _elected(s, inp, t)
    if isinstance(inp, ElectionFailed):
        # a failed handover takeover is over: a later takeover of ours is an ordinary one (with
        # the authority wait), never "handed over"
        return replace(
            s, inflight="", handover_term=0, election_not_before=inp.now + t.heartbeat_interval
        ), []
    if isinstance(inp, KeepAliveResult):
        return _kept_alive(s, inp, t)
    if isinstance(inp, KeepAliveFailed):
        return replace(s, keepalive_inflight=False, keepalive_due=min(s.keepalive_due, inp.now)), []
    if isinstance(inp, PeerSeen):
        return _peer_seen(s, inp, t)
    if isinstance(inp, PeerAck):
        if s.role is Role.ACTIVE and inp.ack_term == s.term and inp.sent_at > s.confirmed_peer:
            return replace(s, confirmed_peer=inp.sent_at), []
        return s, []
    if isinstance(inp, SwitchoverRequested):
        if s.role is not Role.ACTIVE or s.peer is None:
            return s, []
        deadline = inp.now + HANDOVER_RPC_DEADLINES * t.retry_deadline + t.silence
        s2 = replace(
            s,
            role=Role.HANDING_OVER,
            vips=False,
            # ARP-silent, still accepting, until the successor has announced (make-before-break)
            silent=s.vips or s.silent,
            silent_until=deadline + t.linger if s.vips or s.silent else NEVER,
            handover_deadline=deadline,
            reason=f"switchover to {s.peer.node}",
            changed_at=inp.now,
        )
        out: list[Action] = []
        if s.vips:
            out.append(SilenceVips("switchover"))
        out += [Notify("standby", s.term, "switchover"), SendHandover(s.peer.node, s.term)]
        return s2, out
    if isinstance(inp, HandoverAsked):
        if s.role in (Role.STANDBY, Role.FAULT) and inp.term >= s.leader_term and not s.inflight:
            return replace(s, inflight="takeover", handover_term=inp.term), [Takeover(inp.term)]
        return s, []
    if isinstance(inp, HandoverResult):
        if s.role is not Role.HANDING_OVER:
            return s, []
        if inp.ok:  # the successor holds the VIPs and has announced them: ours linger, silent
            return replace(
                _linger(s, inp.now, t),
                role=Role.STANDBY,
                lease_id=0,
                keepalive_inflight=False,
                reason="handed over",
                changed_at=inp.now,
                confirmed_etcd=NEVER,
                confirmed_peer=NEVER,
            ), []
        return _reclaim(s, inp.now, f"handover failed: {inp.error}")
    if isinstance(inp, Stop):
        out = []
        if s.vips or s.silent:
            out.append(RemoveVips("stopping"))
        if s.role in (Role.ACTIVE, Role.HANDING_OVER):
            out += [Resign(s.term), Notify("standby", s.term, "stopping")]
        s = replace(s, role=Role.STOPPED, vips=False, silent=False, reason="stopping", changed_at=inp.now)
        return s, out
    raise TypeError(f"unknown input {inp!r}")


def _tick(s: HaState, now: float, t: HaTiming) -> tuple[HaState, list[Action]]:
    # a gap this long lets the peer's last heartbeat before it look older than `silence` when we
    # resume, before the heartbeats queued meanwhile are read
    stalled = s.last_tick != NEVER and now - s.last_tick > t.silence - t.heartbeat_interval
    s = replace(s, last_tick=now, awake_since=now if stalled else s.awake_since)
    if s.silent and now >= s.silent_until:  # the linger after a switchover is over
        s = replace(s, silent=False, silent_until=NEVER)
        s, out = _tick_role(s, now, t)
        return s, [RemoveVips("switchover done"), *out]
    return _tick_role(s, now, t)


def _tick_role(s: HaState, now: float, t: HaTiming) -> tuple[HaState, list[Action]]:  # noqa: PLR0911
    if s.role is Role.HANDING_OVER and now >= min(s.handover_deadline, authority_until(s, t)):
        return _reclaim(s, now, "the successor did not take over in time")
    if s.role in (Role.ACTIVE, Role.HANDING_OVER):
        if now >= authority_until(s, t):
            return _demote(
                s, now, Role.FAULT, "fault", "leadership not confirmed within the authority window", t=t
            )
        out: list[Action] = []
        if not s.keepalive_inflight and now >= s.keepalive_due:
            s = replace(s, keepalive_inflight=True, keepalive_due=now + t.keepalive_interval)
            out.append(KeepAlive(s.term, s.lease_id))
        s, added = _add_if_due(s, now)
        return s, out + added
    if s.role is Role.FAULT and s.lease_id:
        if not s.keepalive_inflight and now >= s.keepalive_due:
            s = replace(s, keepalive_inflight=True, keepalive_due=now + t.keepalive_interval)
            return s, [KeepAlive(s.term, s.lease_id)]
        return s, []
    # STANDBY / FAULT
    out = []
    if s.vips:  # cannot happen through step(); be safe anyway
        s = replace(s, vips=False)
        out.append(RemoveVips("not active"))
    if s.inflight or now < s.election_not_before:
        return s, out
    if s.leader is None:
        return replace(s, inflight="campaign"), [*out, Campaign()]
    if s.leader == s.node:  # a term of ours from before (restart, fault): replace it
        return replace(s, inflight="takeover", handover_term=0), [*out, Takeover(s.leader_term)]
    if peer_silent(s, now, t) and s.heard_term >= s.leader_term:
        # Only a leader we heard active and then stopped hearing. One we never heard (we learned
        # it from etcd coming back from a partition, before the peer link reconnected) is alive
        # as far as we know: taking over would move the VIPs off a live active for nothing, a new
        # term each time. Should it die before we hear it, its lease expires and we campaign.
        return replace(s, inflight="takeover", handover_term=0), [*out, Takeover(s.leader_term)]
    return s, out


def _observed(s: HaState, inp: Observed, t: HaTiming) -> tuple[HaState, list[Action]]:
    if inp.term < s.leader_term:
        return s, []
    s2 = _learn(s, inp.leader, inp.term)
    if s.role is Role.FAULT and not (s.lease_id and inp.leader == s.node and inp.term == s.term):
        # someone else leads now (a fault whose term etcd still holds waits for its keepalive,
        # which makes it active again: no takeover of its own term, no new term); the old lease
        # is gone, and with it the reason not to acknowledge the new active
        s2 = replace(s2, role=Role.STANDBY, lease_id=0, reason="etcd reachable again", changed_at=inp.now)
    if s.role in (Role.ACTIVE, Role.HANDING_OVER) and (inp.leader != s.node or inp.term != s.term):
        hook = "standby"
        return _demote(
            s2, inp.now, Role.STANDBY, hook, f"leader is now {inp.leader or 'nobody'} term {inp.term}", t=t
        )
    return s2, []


def _elected(s: HaState, inp: ElectionResult, t: HaTiming) -> tuple[HaState, list[Action]]:
    s = replace(s, inflight="")
    if not inp.acquired and inp.leader == s.node and inp.lease_id and inp.leader_term > s.leader_term:
        # an earlier call of ours whose answer was lost did win: that lease is ours; act on it,
        # with the takeover's wait (we do not know what the previous holder was told)
        inp = replace(inp, acquired=True, op="takeover", term=inp.leader_term)
        s = replace(s, handover_term=0)
    if not inp.acquired:
        s = _learn(s, inp.leader, inp.leader_term)
        if s.role is Role.FAULT:
            s = replace(s, role=Role.STANDBY, reason="etcd reachable again", changed_at=inp.now)
        return replace(s, handover_term=0, election_not_before=inp.now + t.heartbeat_interval), []
    if s.role in (Role.ACTIVE, Role.HANDING_OVER):
        return s, []  # cannot happen: one election call at a time
    handed = inp.op == "takeover" and s.handover_term != 0
    # The old active's authority: from etcd, it ends within `authority` of a takeover's answer (and
    # before a lease expiry, which a campaign needs); from our acknowledgements, within
    # `authority` of the last one (we give none once an election call is in flight).
    wait = t.authority + t.margin
    not_before = inp.now if inp.op == "campaign" or handed else inp.now + wait
    if handed:  # a reclaim keeps the wait its term still owed (it was offered before the VIPs)
        not_before = max(not_before, s.vip_not_before)
    if not handed:
        not_before = max(not_before, s.acked_at + wait)
    # a handover or a campaign: the VIPs at once, in this step (no wait for the next tick)
    return _add_if_due(
        replace(
            s,
            role=Role.ACTIVE,
            term=inp.term,
            lease_id=inp.lease_id,
            leader=s.node,
            leader_term=inp.term,
            vips=False,
            vip_not_before=not_before,
            vip_after_confirm=NEVER,
            confirmed_etcd=inp.sent_at,
            confirmed_peer=NEVER,
            keepalive_due=inp.now + t.keepalive_interval,
            keepalive_inflight=False,
            handover_term=0,
            reason=f"{inp.op} won term {inp.term}" + (" (handed over)" if handed else ""),
            changed_at=inp.now,
        ),
        inp.now,
    )


def _kept_alive(s: HaState, inp: KeepAliveResult, t: HaTiming) -> tuple[HaState, list[Action]]:
    s = replace(s, keepalive_inflight=False)
    if s.role is Role.FAULT and s.lease_id and inp.term == s.term:
        if inp.held:  # nobody took over while we could not tell: act again, as any active does
            return _add_if_due(
                replace(
                    s,
                    role=Role.ACTIVE,
                    confirmed_etcd=inp.sent_at,
                    vip_not_before=inp.now,
                    vip_after_confirm=NEVER,
                    reason="leadership confirmed again",
                    changed_at=inp.now,
                ),
                inp.now,
            )
        s = _learn(s, inp.leader, inp.leader_term)
        return replace(s, lease_id=0, role=Role.STANDBY, reason="lost the lease while in fault"), []
    if s.role not in (Role.ACTIVE, Role.HANDING_OVER) or inp.term != s.term:
        return s, []
    if inp.held:
        if inp.sent_at > s.confirmed_etcd:
            s = replace(s, confirmed_etcd=inp.sent_at)
        return s, []
    s = _learn(s, inp.leader, inp.leader_term)
    if s.role is Role.HANDING_OVER:
        return replace(
            _linger(s, inp.now, t),
            role=Role.STANDBY,
            lease_id=0,
            reason="handed over",
            changed_at=inp.now,
            confirmed_etcd=NEVER,
            confirmed_peer=NEVER,
        ), []
    why = f"lost the lease: leader is {inp.leader or 'nobody'}"
    return _demote(s, inp.now, Role.STANDBY, "standby", why, t=t)


def _peer_seen(s: HaState, inp: PeerSeen, t: HaTiming) -> tuple[HaState, list[Action]]:
    s = replace(s, peer=PeerView(inp.node, inp.role, inp.term, inp.revision, inp.digest, inp.now))
    if inp.role == Role.ACTIVE.value and inp.term > s.heard_term:
        s = replace(s, heard_term=inp.term)
    if inp.reply:
        ack = ack_for(s, inp.role, inp.term)
        s = replace(s, acked_term=ack, acked_at=inp.now if ack else s.acked_at)
    if inp.role == Role.ACTIVE.value and inp.term > s.leader_term:
        s = _learn(s, inp.node, inp.term)
    if s.role is Role.ACTIVE and inp.role == Role.ACTIVE.value and inp.term > s.term:
        # etcd granted the peer a later term: we lost, whatever our keepalives say yet
        why = f"peer {inp.node} is active with term {inp.term}"
        return _demote(s, inp.now, Role.STANDBY, "standby", why, t=t)
    return s, []
