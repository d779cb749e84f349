"""Pure text/JSON views for the CLI: one line per event, status tables. No I/O."""

from __future__ import annotations

import datetime as dt
import json

from lvs_events.domain import codec
from lvs_events.domain.events import (
    AdminOverride,
    CommandRefused,
    ConfigApplied,
    ConfigRejected,
    DataplaneDrift,
    DrillMarker,
    Event,
    Leadership,
    LogIntegrity,
    RealServerHealth,
    TableApplied,
)
from lvs_events.domain.render import render
from lvs_events.domain.state import State, observations


def summary(event: Event) -> str:  # noqa: PLR0911 -- one return per payload type
    """What happened, in a few words."""
    p = event.payload
    if isinstance(p, ConfigApplied):
        n_real = sum(len(v.reals) for v in p.config.virtuals)
        src = f" from {p.config.source}" if p.config.source else ""
        return f"config applied{src}: {len(p.config.virtuals)} virtual services, {n_real} real servers"
    if isinstance(p, RealServerHealth):
        state = "UP" if p.up else "DOWN"
        detail = f" ({p.detail})" if p.detail else ""
        evidence = f"[{p.checktype}{detail}, {p.latency_ms:.1f}ms]"
        return f"{p.virtual} -> {p.real} {state} seen by {p.observer} {evidence}"
    if isinstance(p, AdminOverride):
        extra = f" weight={p.weight}" if p.action.value == "weight" else ""
        until = f" until {_time(p.expires_at)}" if p.expires_at else ""
        return f"{p.action.value} {p.virtual} -> {p.real}{extra}{until}"
    if isinstance(p, TableApplied):
        return f"{p.node} applied revision {p.revision} digest {p.digest[:12]}"
    if isinstance(p, Leadership):
        return f"{p.node} {p.change.value} leadership, term {p.term}"
    if isinstance(p, ConfigRejected):
        return f"config {p.source} REFUSED, the config in force stays: {p.error}"
    if isinstance(p, DataplaneDrift):
        shown = "; ".join(p.repairs[:3]) + (f"; and {len(p.repairs) - 3} more" if len(p.repairs) > 3 else "")
        return f"{p.node} repaired IPVS drift at revision {p.revision}: {shown or 'nothing'}"
    if isinstance(p, CommandRefused):
        more = f" and {len(p.virtuals) - 3} more" if len(p.virtuals) > 3 else ""
        where = ", ".join(p.virtuals[:3]) + more
        return f"{p.node} REFUSED {p.kind} {p.command!r} ({where or 'no service'}): {p.reason}"
    if isinstance(p, LogIntegrity):
        return f"{p.node} found the log's hash chain broken at revision {p.revision}: {p.detail}"
    if isinstance(p, DrillMarker):
        detail = f": {p.detail}" if p.detail else ""
        return f"drill {p.drill_id} {p.scenario} {p.phase}{detail}"
    raise TypeError(type(p))


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event_line(event: Event) -> str:
    """``REV  TIME  NODE  ACTOR  TYPE  SUMMARY  (why)`` — one readable line per event."""
    why = f"  reason={event.reason!r}" if event.reason else ""
    term = f" term={event.term}" if event.term else ""
    return (
        f"{event.revision:>8}  {_time(event.wall_time)}  {event.origin:<10} {event.actor:<14} "
        f"{event.type_name:<16} {summary(event)}{why}{term}"
    )


def event_json(event: Event) -> str:
    """One JSON object per line (``-o json``)."""
    return json.dumps(
        {
            "revision": event.revision,
            "time": _time(event.wall_time),
            "wall_time": event.wall_time,
            "event_id": event.event_id,
            "cluster": event.cluster,
            "node": event.origin,
            "actor": event.actor,
            "reason": event.reason,
            "term": event.term,
            "type": event.type_name,
            "summary": summary(event),
            "payload": codec.encode(event.payload),
        },
        sort_keys=True,
    )


def status_text(state: State, head: int, now_digest: str) -> str:
    """``lvs-events status``: nodes with their applied revision, digest and lag, then disagreements.

    Agents report (``TableApplied``) when their table changes, not at every revision: a node whose
    digest is the current one is in sync (lag 0); otherwise the lag counts revisions since its
    last report.
    """
    lines = [
        f"cluster {state.cluster or '-'}  head revision {head}  table digest {now_digest[:12]}",
        f"active: {state.leader or '-'}  term {state.term}",
        "",
        f"{'NODE':<12} {'APPLIED':>8} {'LAG':>6}  {'DIGEST':<12}  IN SYNC",
    ]
    for node, ns in sorted(state.nodes.items()):
        in_sync = ns.digest == now_digest
        lag = 0 if in_sync else max(0, head - ns.applied_revision)
        sync = "yes" if in_sync else "no"
        lines.append(f"{node:<12} {ns.applied_revision:>8} {lag:>6}  {ns.digest[:12]:<12}  {sync}")
    if not state.nodes:
        lines.append("(no node has reported a table yet)")
    disagreements = []
    for (vk, rk), _views in sorted(state.health.items()):
        views = observations(state, vk, rk)
        if len({o.up for o in views.values()}) > 1:
            seen = ", ".join(f"{n}={'up' if o.up else 'down'}" for n, o in sorted(views.items()))
            disagreements.append(f"  {vk} -> {rk}: {seen}")
    if state.config_error:
        lines += ["", f"last refused config: {state.config_error}"]
    if disagreements:
        lines += ["", "health views that disagree:", *disagreements]
    return "\n".join(lines) + "\n"


def table_digest(state: State) -> str:
    return render(state).digest()
