"""The folded state of the log and the fold itself: ``fold(state, event) -> state``.

Pure and deterministic: the result depends only on the previous state and the event (the event's
own wall time stands in for "now"; no clock is read). Maps are persistent (HAMT, from
``immutables``) so a fold costs O(log n) and every intermediate state stays valid: the
coordinator keeps snapshots and serves ``GetState`` at old revisions without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from immutables import Map

from lvs_events.domain.config import Config
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    DrillMarker,
    Event,
    Leadership,
    LeadershipChange,
    RealServerHealth,
    TableApplied,
)

RealKey = tuple[str, str]  # (virtual key, real key)


@dataclass(frozen=True, slots=True)
class Observation:
    """One observer's latest verdict on one real server."""

    up: bool
    revision: int  # log revision of the event that set it
    wall_time: float
    checktype: str = ""
    detail: str = ""
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's standing instruction for one real server."""

    action: AdminAction
    weight: int
    expires_at: float  # 0 = never
    actor: str
    reason: str
    revision: int

    def active(self, now: float) -> bool:
        return self.expires_at == 0.0 or now < self.expires_at


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node last reported about its dataplane (from ``TableApplied``)."""

    applied_revision: int
    digest: str
    reported_at_revision: int
    wall_time: float


@dataclass(frozen=True, slots=True)
class State:
    cluster: str = ""
    revision: int = 0  # last folded log revision
    clock: float = 0.0  # highest wall time seen: the state's notion of "now"
    config: Config | None = None
    config_revision: int = 0
    # (virtual, real) -> observer node -> latest verdict
    health: Map[RealKey, Map[str, Observation]] = field(default_factory=Map)
    overrides: Map[RealKey, Override] = field(default_factory=Map)
    nodes: Map[str, NodeStatus] = field(default_factory=Map)
    leader: str | None = None
    term: int = 0
    last_drill: str = ""


def fold(state: State, event: Event) -> State:
    """Apply one event. Events at or below ``state.revision`` are ignored (replay is idempotent)."""
    if event.revision and event.revision <= state.revision:
        return state
    revision = event.revision or state.revision + 1
    clock = max(state.clock, event.wall_time)
    p = event.payload
    s = state
    if isinstance(p, ConfigApplied):
        s = replace(s, config=p.config, config_revision=revision)
    elif isinstance(p, RealServerHealth):
        key = (p.virtual, p.real)
        views = s.health.get(key, Map()).set(
            p.observer, Observation(p.up, revision, event.wall_time, p.checktype, p.detail, p.latency_ms)
        )
        s = replace(s, health=s.health.set(key, views))
    elif isinstance(p, AdminOverride):
        key = (p.virtual, p.real)
        if p.action is AdminAction.ENABLE:
            overrides = s.overrides.delete(key) if key in s.overrides else s.overrides
        else:
            overrides = s.overrides.set(
                key, Override(p.action, p.weight, p.expires_at, event.actor, event.reason, revision)
            )
        s = replace(s, overrides=overrides)
    elif isinstance(p, TableApplied):
        s = replace(
            s, nodes=s.nodes.set(p.node, NodeStatus(p.revision, p.digest, revision, event.wall_time))
        )
    elif isinstance(p, Leadership):
        if p.term >= s.term:
            if p.change is LeadershipChange.ACQUIRED:
                s = replace(s, leader=p.node, term=p.term)
            elif s.leader == p.node:
                s = replace(s, leader=None, term=p.term)
    elif isinstance(p, DrillMarker):
        s = replace(s, last_drill=f"{p.drill_id} {p.scenario} {p.phase}")
    return replace(s, revision=revision, clock=clock, cluster=s.cluster or event.cluster)


def fold_all(state: State, events: list[Event] | tuple[Event, ...]) -> State:
    for e in events:
        state = fold(state, e)
    return state


def effective_health(state: State, virtual: str, real: str) -> Observation | None:
    """The verdict the table follows for one real server.

    The active director's view when a leader is known and has observed the server; otherwise
    the most recent observation by any node. ``None``: nobody has checked it yet.
    """
    views = state.health.get((virtual, real))
    if views is None:
        return None
    if state.leader is not None:
        obs = views.get(state.leader)
        if obs is not None:
            return obs
    return max(views.values(), key=lambda o: o.revision, default=None)


def observations(state: State, virtual: str, real: str) -> dict[str, Observation]:
    """Every node's view of one real server (for ``status``: disagreements are visible)."""
    return dict(state.health.get((virtual, real), Map()).items())
