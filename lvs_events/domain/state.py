"""The folded state of the log and the fold itself: ``fold(state, event) -> state``.

Pure and deterministic: the result depends only on the previous state and the event; no clock is
read. Time: ``State.clock`` is the highest wall time seen in the log, the state's "now" (an
override whose ``expires_at`` it has passed no longer applies, see ``Override.active``). On a
quiet log that clock stands still, so a coordinator appends :class:`OverrideExpired` when an
override's expiry passes (``lvs_events.coordinator.expiry``), stamped at that time: the override
ends at that event's revision on every node, with or without other traffic.

Overrides apply to the configuration: one naming a virtual service and real server the config in
force does not define is ignored, and a ``ConfigApplied`` ends the overrides of the servers it
does not define (those recorded before any config included). Maps are persistent (HAMT, from
``immutables``) so a fold costs O(log n) and every intermediate state stays valid: the
coordinator keeps snapshots and serves ``GetState`` at old revisions without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from immutables import Map

from lvs_events.domain.config import Config
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    CheckerHealth,
    ConfigApplied,
    ConfigRejected,
    DrillMarker,
    Event,
    Leadership,
    LeadershipChange,
    OverrideExpired,
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
class CheckerStatus:
    """What a node last said about its own health checker (from ``CheckerHealth``)."""

    degraded: bool
    behind: bool
    stretch: float
    revision: int
    wall_time: float
    detail: str = ""


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
    config_error: str = ""  # the last refused config (autoreload) since the last one applied
    # node -> its checker's last word about itself; a node absent here has never been degraded
    checkers: Map[str, CheckerStatus] = field(default_factory=Map)


def fold(state: State, event: Event) -> State:  # noqa: PLR0912, PLR0915 -- one branch per payload type
    """Apply one event. Events at or below ``state.revision`` are ignored (replay is idempotent)."""
    if event.revision and event.revision <= state.revision:
        return state
    revision = event.revision or state.revision + 1
    clock = state.clock if state.clock >= event.wall_time else event.wall_time
    p = event.payload
    # One constructor call at the end (``replace`` per field is the slow part of a replay).
    config, config_revision = state.config, state.config_revision
    health, overrides, nodes = state.health, state.overrides, state.nodes
    leader, term, last_drill = state.leader, state.term, state.last_drill
    config_error = state.config_error
    checkers = state.checkers
    kind = type(p)
    if kind is RealServerHealth:
        assert isinstance(p, RealServerHealth)
        key = (p.virtual, p.real)
        views = health.get(key)
        obs = Observation(p.up, revision, event.wall_time, p.checktype, p.detail, p.latency_ms)
        health = health.set(key, (views if views is not None else Map()).set(p.observer, obs))
    elif kind is AdminOverride:
        assert isinstance(p, AdminOverride)
        key = (p.virtual, p.real)
        if p.action is AdminAction.ENABLE:
            overrides = overrides.delete(key) if key in overrides else overrides
        elif config is None or defines(config, p.virtual, p.real):
            overrides = overrides.set(
                key, Override(p.action, p.weight, p.expires_at, event.actor, event.reason, revision)
            )
    elif kind is OverrideExpired:
        assert isinstance(p, OverrideExpired)
        key = (p.virtual, p.real)
        ov = overrides.get(key)
        if ov is not None and ov.revision == p.override_revision:  # a later override stays
            overrides = overrides.delete(key)
    elif kind is ConfigApplied:
        assert isinstance(p, ConfigApplied)
        if p.replaces_revision is not None and p.replaces_revision != config_revision:
            config_error = (
                f"revision {revision}: stale config{_from(p)} refused: it replaces the config of "
                f"revision {p.replaces_revision}, the config in force is of revision {config_revision}"
            )
        else:
            config, config_revision, config_error = p.config, revision, ""
            overrides = _overrides_within(overrides, p.config)
    elif kind is TableApplied:
        assert isinstance(p, TableApplied)
        nodes = nodes.set(p.node, NodeStatus(p.revision, p.digest, revision, event.wall_time))
    elif kind is Leadership:
        assert isinstance(p, Leadership)
        if p.term >= term:
            if p.change is LeadershipChange.ACQUIRED:
                leader, term = p.node, p.term
            elif leader == p.node:
                leader, term = None, p.term
    elif kind is DrillMarker:
        assert isinstance(p, DrillMarker)
        last_drill = f"{p.drill_id} {p.scenario} {p.phase}"
    elif kind is ConfigRejected:
        assert isinstance(p, ConfigRejected)
        config_error = f"revision {revision}: {p.error}"
    elif kind is CheckerHealth:
        assert isinstance(p, CheckerHealth)
        checkers = checkers.set(
            p.node, CheckerStatus(p.degraded, p.behind, p.stretch, revision, event.wall_time, p.detail)
        )
    return State(
        state.cluster or event.cluster,
        revision,
        clock,
        config,
        config_revision,
        health,
        overrides,
        nodes,
        leader,
        term,
        last_drill,
        config_error,
        checkers,
    )


def _from(p: ConfigApplied) -> str:
    return f" from {p.config.source}" if p.config.source else ""


def defines(config: Config, virtual: str, real: str) -> bool:
    """Whether ``config`` has the virtual service ``virtual`` with the real server ``real``."""
    for v in config.virtuals:
        if v.key == virtual:
            return any(r.key == real for r in v.reals)
    return False


def _overrides_within(overrides: Map[RealKey, Override], config: Config) -> Map[RealKey, Override]:
    """``overrides`` without those of servers ``config`` does not define (they end with it)."""
    if not overrides:
        return overrides
    pairs = {(v.key, r.key) for v in config.virtuals for r in v.reals}
    gone = [key for key in overrides if key not in pairs]
    if not gone:
        return overrides
    m = overrides.mutate()
    for key in gone:
        del m[key]
    return m.finish()


def ended_overrides(state: State, config: Config) -> list[tuple[RealKey, Override]]:
    """The overrides in force that applying ``config`` would end (their servers are removed)."""
    pairs = {(v.key, r.key) for v in config.virtuals for r in v.reals}
    return sorted((k, ov) for k, ov in state.overrides.items() if k not in pairs and ov.active(state.clock))


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


def checker_degraded(state: State, node: str) -> bool:
    """Whether ``node``'s health checker last said it is degraded (behind, inconclusive)."""
    status = state.checkers.get(node) if state.checkers else None
    return status is not None and status.degraded


def observations(state: State, virtual: str, real: str) -> dict[str, Observation]:
    """Every node's view of one real server (for ``status``: disagreements are visible)."""
    return dict(state.health.get((virtual, real), Map()).items())
