"""Domain events: what the log records. Pure values, no wire format.

The protobuf envelope (``lvs_events.v1.Event``) is converted to and from these types at the
edge (``lvs_events.wire``); nothing in the domain sees generated code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lvs_events.domain.config import Config


class AdminAction(enum.StrEnum):
    DRAIN = "drain"  # weight 0: no new connections, existing ones finish
    ENABLE = "enable"  # clear any override: back to config weight and health
    WEIGHT = "weight"  # set an explicit weight
    DISABLE = "disable"  # remove from the table


class LeadershipChange(enum.StrEnum):
    ACQUIRED = "acquired"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    config: Config
    digest: str = ""  # digest of the source text, informative
    # Optimistic concurrency: the revision of the ConfigApplied this one replaces (0: it
    # replaces no config). When it is not the config in force at the event's revision the fold
    # keeps the config in force and records the refusal. None: unconditional.
    replaces_revision: int | None = None


@dataclass(frozen=True, slots=True)
class RealServerHealth:
    virtual: str  # VirtualService.key, e.g. "TCP 203.0.113.10:80"
    real: str  # RealServer.key, e.g. "192.0.2.11:80"
    up: bool
    observer: str  # node that ran the check
    checktype: str = ""
    detail: str = ""
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AdminOverride:
    virtual: str
    real: str
    action: AdminAction
    weight: int = 0  # for WEIGHT
    expires_at: float = 0.0  # unix seconds; 0 = never


@dataclass(frozen=True, slots=True)
class OverrideExpired:
    """The operator override set at ``override_revision`` reached its ``expires_at``.

    Appended by a coordinator once its clock passes the expiry, with an event id derived from
    the override's revision (:func:`expiry_event_id`), so several coordinators append it once.
    The fold ends that override (and no later one) here, at the same revision on every node."""

    virtual: str
    real: str
    override_revision: int


@dataclass(frozen=True, slots=True)
class TableApplied:
    node: str
    revision: int
    digest: str


@dataclass(frozen=True, slots=True)
class Leadership:
    node: str
    change: LeadershipChange
    term: int


@dataclass(frozen=True, slots=True)
class DrillMarker:
    drill_id: str
    scenario: str
    phase: str  # start | detect | elect | vip | first-connection | end
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConfigRejected:
    """A changed config file that could not be applied (autoreload); the config in force stays."""

    source: str
    error: str
    digest: str = ""


@dataclass(frozen=True, slots=True)
class DataplaneDrift:
    """A node's periodic check found its kernel table changed behind its back (someone ran
    ``ipvsadm``) and repaired it. A record only: the fold changes nothing."""

    node: str
    revision: int  # the log revision whose table the node holds (and restored)
    repairs: tuple[str, ...]  # one line per operation: "edit-dest TCP 1.2.3.4:80 -> 10.0.0.1:80 w=30"
    foreign: tuple[str, ...] = ()  # services in the kernel the node does not own (left alone)


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """A node refused to run a command the configuration in force names (its local policy does
    not allow it): an external check counts as failed, a fallbackcommand is not started. A
    record only: the fold changes nothing."""

    node: str
    kind: str  # checkcommand | fallbackcommand
    command: str  # as the configuration writes it
    virtuals: tuple[str, ...]  # the virtual services naming it (at most 100)
    reason: str
    config_revision: int  # the revision of the ConfigApplied in force


@dataclass(frozen=True, slots=True)
class LogIntegrity:
    """An agent found the log's hash chain broken while replaying it (an entry edited or removed
    behind the coordinators' back, :mod:`lvs_events.domain.chain`). A record only: the fold
    changes nothing."""

    node: str  # the agent that found it
    revision: int  # the first revision whose link does not hold
    expected: str  # hex: the hash the chain predicts
    found: str  # hex: the hash the entry carries
    detail: str = ""  # which link failed


@dataclass(frozen=True, slots=True)
class CheckerHealth:
    """A node's health checker about itself, published on its transitions (not every tick).

    ``behind``: the configuration asks for more checks a second (``demand``) than the checker
    can finish (``capacity``), so it stretches every check interval by ``stretch`` (the longest
    interval between two checks of one server is then ``effective_interval`` seconds).
    ``degraded``: behind, or some of its checks were inconclusive (their deadline passed while
    the checker itself could not run): its verdicts may lag the real servers, and the table
    follows another node's view where that node's checker is not degraded.
    """

    node: str
    degraded: bool
    behind: bool = False
    stretch: float = 1.0
    effective_interval: float = 0.0
    capacity: float = 0.0  # checks a second the checker admits
    demand: float = 0.0  # checks a second the configuration asks for
    inconclusive: int = 0  # inconclusive checks since the checker started
    detail: str = ""


Payload = (
    ConfigApplied
    | RealServerHealth
    | AdminOverride
    | TableApplied
    | Leadership
    | DrillMarker
    | ConfigRejected
    | DataplaneDrift
    | CommandRefused
    | LogIntegrity
    | CheckerHealth
    | OverrideExpired
)

PAYLOAD_TYPES: dict[type[object], str] = {
    ConfigApplied: "ConfigApplied",
    RealServerHealth: "RealServerHealth",
    AdminOverride: "AdminOverride",
    TableApplied: "TableApplied",
    Leadership: "Leadership",
    DrillMarker: "DrillMarker",
    ConfigRejected: "ConfigRejected",
    DataplaneDrift: "DataplaneDrift",
    CommandRefused: "CommandRefused",
    LogIntegrity: "LogIntegrity",
    CheckerHealth: "CheckerHealth",
    OverrideExpired: "OverrideExpired",
}


@dataclass(frozen=True, slots=True)
class Event:
    """An event as the log holds it.

    ``revision`` is the event's position in the log (dense, from 1), given by the coordinator at
    append; 0 before the event is appended.
    """

    event_id: str
    cluster: str
    origin: str  # node that published it
    actor: str  # daemon name or operator name
    reason: str
    wall_time: float  # unix seconds, set by the publisher
    payload: Payload
    term: int = 0  # leader term the publisher acted under (fencing), 0 = none
    revision: int = 0

    @property
    def type_name(self) -> str:
        return PAYLOAD_TYPES[type(self.payload)]


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def format_event_id(ms: int, entropy: bytes) -> str:
    """A ULID-like event id: 26 characters of Crockford base32, the low 48 bits of ``ms``
    (milliseconds) then 80 bits of ``entropy`` (its first 10 bytes, zero-padded). Ids sort by
    ``ms``. The caller brings the clock and the randomness (the domain has neither)."""
    value = ((ms & ((1 << 48) - 1)) << 80) | int.from_bytes(entropy[:10].ljust(10, b"\0"), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def expiry_event_id(cluster: str, override_revision: int) -> str:
    """The one event id of the :class:`OverrideExpired` ending the override of that revision:
    every coordinator derives the same, and the log keeps one of them."""
    return f"expire:{cluster}:{override_revision}"
