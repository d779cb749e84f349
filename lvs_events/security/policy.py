"""What each principal may do: the role table of docs/security.md, as code. Pure.

Two kinds of action are decided:

* :class:`Call`: one RPC of the three services (``Coordinator``, ``LeaderElection``, ``Peer``),
  with, when the request says so, the node it acts for (``Campaign(node=...)``) and, for the Peer
  service, the peer the serving agent is configured with;
* :class:`PublishEvent`: one event of a ``Publish`` stream, with the node it speaks for
  (``RealServerHealth.observer``, ``TableApplied.node``, ``DataplaneDrift.node``,
  ``CheckerHealth.node``).

The table (``R`` any node, ``=`` only for the principal's own name, ``P`` only the configured
peer; ``-`` refused):

=====================  ========  ========  ======  =======  ==========
action                 director  operator  reader  witness  unverified
=====================  ========  ========  ======  =======  ==========
Publish (stream)       R         R         -       -        R
Subscribe, GetState*   R         R         R       R        R
Campaign, KeepAlive,   =         -         -       -        R
Resign, Takeover
GetLeader, Observe     R         R         R       R        R
Peer Heartbeat,        P         -         -       -        R
Handover
Peer Switchover        -         R         -       -        R
Peer Status            R         R         R       R        R
health, reflection     R         R         R       R        R
event RealServerHealth =         -         -       -        R
event TableApplied,    =         -         -       -        R
DataplaneDrift,
CommandRefused,
LogIntegrity,
CheckerHealth
event ConfigApplied    R         R         -       -        R
event ConfigRejected   R         -         -       -        R
event AdminOverride    -         R         -       -        R
event DrillMarker      -         R         -       -        R
event Leadership       -         -         -       -        R
=====================  ========  ========  ======  =======  ==========

Operators change leadership only through the active agent (``Peer Switchover``), which hands
over under its own director identity; they never call ``Takeover``/``Resign`` themselves.
``Leadership`` events are written by the coordinator's election transactions, never published.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lvs_events.domain.events import (
    AdminOverride,
    CheckerHealth,
    CommandRefused,
    ConfigApplied,
    ConfigRejected,
    DataplaneDrift,
    DrillMarker,
    Event,
    Leadership,
    LogIntegrity,
    OverrideExpired,
    RealServerHealth,
    TableApplied,
)
from lvs_events.security.principal import Principal, Role

MAX_ACTOR = 256  # the log's limit on ``actor``
UNVERIFIED_PREFIX = "unverified:"


class Rpc(enum.StrEnum):
    """Every RPC of the three services, by its full gRPC method name."""

    PUBLISH = "/lvs_events.v1.Coordinator/Publish"
    SUBSCRIBE = "/lvs_events.v1.Coordinator/Subscribe"
    GET_STATE = "/lvs_events.v1.Coordinator/GetState"
    GET_STATE_CHUNKS = "/lvs_events.v1.Coordinator/GetStateChunks"
    CAMPAIGN = "/lvs_events.v1.LeaderElection/Campaign"
    TAKEOVER = "/lvs_events.v1.LeaderElection/Takeover"
    KEEPALIVE = "/lvs_events.v1.LeaderElection/KeepAlive"
    RESIGN = "/lvs_events.v1.LeaderElection/Resign"
    GET_LEADER = "/lvs_events.v1.LeaderElection/GetLeader"
    OBSERVE = "/lvs_events.v1.LeaderElection/Observe"
    HEARTBEAT = "/lvs_events.v1.Peer/Heartbeat"
    HANDOVER = "/lvs_events.v1.Peer/Handover"
    SWITCHOVER = "/lvs_events.v1.Peer/Switchover"
    STATUS = "/lvs_events.v1.Peer/Status"

    @property
    def short(self) -> str:
        return self.value.rsplit("/", 1)[1]


# Infrastructure services any principal may call: grpc health checks and server reflection.
PUBLIC_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

READS = frozenset(
    {Rpc.SUBSCRIBE, Rpc.GET_STATE, Rpc.GET_STATE_CHUNKS, Rpc.GET_LEADER, Rpc.OBSERVE, Rpc.STATUS}
)
ELECTION_WRITES = frozenset({Rpc.CAMPAIGN, Rpc.TAKEOVER, Rpc.KEEPALIVE, Rpc.RESIGN})
PEER_ONLY = frozenset({Rpc.HEARTBEAT, Rpc.HANDOVER})

_CALLS: dict[Role, frozenset[Rpc]] = {
    Role.DIRECTOR: READS | ELECTION_WRITES | PEER_ONLY | {Rpc.PUBLISH},
    Role.OPERATOR: READS | {Rpc.PUBLISH, Rpc.SWITCHOVER},
    Role.READER: READS,
    Role.WITNESS: READS,
    Role.UNVERIFIED: frozenset(Rpc),
}

# event type -> roles that may publish it; "subject" types need the subject to be the name
_EVENTS: dict[str, frozenset[Role]] = {
    "RealServerHealth": frozenset({Role.DIRECTOR}),
    "TableApplied": frozenset({Role.DIRECTOR}),
    "DataplaneDrift": frozenset({Role.DIRECTOR}),
    "CommandRefused": frozenset({Role.DIRECTOR}),
    "LogIntegrity": frozenset({Role.DIRECTOR}),
    "CheckerHealth": frozenset({Role.DIRECTOR}),
    "ConfigApplied": frozenset({Role.DIRECTOR, Role.OPERATOR}),
    "ConfigRejected": frozenset({Role.DIRECTOR}),
    "AdminOverride": frozenset({Role.OPERATOR}),
    "DrillMarker": frozenset({Role.OPERATOR}),
    "Leadership": frozenset(),
    "OverrideExpired": frozenset(),  # appended by the coordinators themselves, never published
}
_SUBJECT_WORDS = {
    "RealServerHealth": "health",
    "TableApplied": "TableApplied",
    "DataplaneDrift": "DataplaneDrift",
    "CommandRefused": "CommandRefused",
    "LogIntegrity": "LogIntegrity",
    "CheckerHealth": "CheckerHealth",
}


@dataclass(frozen=True, slots=True)
class Call:
    """One RPC. ``node``: the node the request acts for (election requests, heartbeats), when
    the caller knows it; ``peer``: the Peer service's configured peer ("" = none configured)."""

    rpc: Rpc
    node: str | None = None
    peer: str = ""


@dataclass(frozen=True, slots=True)
class PublishEvent:
    """One event of a Publish stream. ``subject``: the node it speaks for, for the types that
    have one (``observer`` of health, ``node`` of TableApplied and DataplaneDrift)."""

    event_type: str
    subject: str | None = None


Action = Call | PublishEvent


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


def publish_action(event: Event) -> PublishEvent:
    p = event.payload
    match p:
        case RealServerHealth():
            return PublishEvent("RealServerHealth", p.observer)
        case TableApplied() | DataplaneDrift() | CommandRefused() | LogIntegrity() | CheckerHealth():
            return PublishEvent(event.type_name, p.node)  # a node's report about itself
        case (
            ConfigApplied()
            | ConfigRejected()
            | AdminOverride()
            | DrillMarker()
            | Leadership()
            | OverrideExpired()
        ):
            return PublishEvent(event.type_name)


def _escape(c: str) -> str:
    if c.isprintable():
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def show(text: str, limit: int = 64) -> str:
    """``text`` safe for a terminal and a log line: non-printable characters (controls, escapes,
    bidirectional overrides) escaped, at most ``limit`` characters then ``...``."""
    if len(text) <= limit and text.isprintable():  # the common case, without a pass per character
        return text
    out = "".join(_escape(c) for c in text[: limit + 1])
    return out if len(out) <= limit else out[:limit] + "..."


def _roles_that_may(rpc: Rpc) -> str:
    roles = [r.value + "s" for r in Role if r is not Role.UNVERIFIED and rpc in _CALLS[r]]
    return ", ".join(roles) or "no role"


def _ok(why: str) -> Decision:
    return Decision(True, why)


def decide(principal: Principal | None, action: Action) -> Decision:
    """Whether ``principal`` may do ``action``, with a reason an operator understands."""
    if principal is None:
        return Decision(
            False,
            "the client certificate names no lvs-events principal "
            "(expected O=lvs-events:<role>, CN=<name>; see docs/security.md)",
        )
    if isinstance(action, Call):
        return _decide_call(principal, action)
    return _decide_event(principal, action)


def _decide_call(who: Principal, call: Call) -> Decision:
    rpc = call.rpc
    if who.role is Role.UNVERIFIED:
        return _ok("unverified caller (no TLS): every call allowed")
    if rpc not in _CALLS[who.role]:
        return Decision(False, f"{who} may not call {rpc.short} (allowed to: {_roles_that_may(rpc)})")
    if rpc in PEER_ONLY:
        if not call.peer:
            return Decision(False, f"{who} may not call {rpc.short}: this agent has no configured peer")
        if who.name != call.peer:
            return Decision(
                False, f"{who} may not call {rpc.short}: only the configured peer '{show(call.peer)}' may"
            )
    if rpc in ELECTION_WRITES | PEER_ONLY and call.node is not None and call.node != who.name:
        return Decision(False, f"{who} may not call {rpc.short} for '{show(call.node)}', only for itself")
    return _ok(f"{who} may call {rpc.short}")


def _decide_event(who: Principal, ev: PublishEvent) -> Decision:
    if who.role is Role.UNVERIFIED:
        return _ok("unverified caller (no TLS): every event allowed, stamped unverified")
    refusal = _event_refusal(who, ev)
    return Decision(False, refusal) if refusal else _ok(f"{who} may publish {ev.event_type}")


def _event_refusal(who: Principal, ev: PublishEvent) -> str | None:
    roles = _EVENTS.get(ev.event_type)
    if roles is None:
        return f"{who} may not publish {show(ev.event_type)}: unknown event type"
    if not roles:
        return f"{who} may not publish {ev.event_type}: only the coordinator's election writes it"
    if who.role not in roles:
        allowed = ", ".join(sorted(r.value + "s" for r in roles))
        return f"{who} may not publish {ev.event_type} (allowed to: {allowed})"
    word = _SUBJECT_WORDS.get(ev.event_type)
    if word is not None and ev.subject is None:
        return f"{who} may not publish {word} without naming its node"
    if word is not None and ev.subject != who.name:
        return f"{who} may not publish {word} as '{show(ev.subject or '')}'"
    return None


def stamp(principal: Principal, claimed_actor: str, claimed_origin: str) -> tuple[str, str]:
    """``(actor, origin)`` to record on an event: the verified identity, never the claimed one.

    A verified principal is recorded as its certificate's name in both fields. An unverified
    caller keeps its claimed origin (the log's node-name check still applies to it) and its
    claimed actor behind ``unverified:``, with non-printable characters escaped.
    """
    if principal.role is Role.UNVERIFIED:
        room = MAX_ACTOR - len(UNVERIFIED_PREFIX) - 3
        return UNVERIFIED_PREFIX + show(claimed_actor, room), claimed_origin
    return principal.name, principal.name
