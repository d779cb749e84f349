"""Pure text/JSON views for the CLI: one line per event, status tables. No I/O.

Every text from the log (names, reasons, details) goes through :func:`clean` before it reaches
a terminal: a control character in an ``actor`` or a ``reason`` is printed escaped, never
interpreted.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

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
    OverrideExpired,
    RealServerHealth,
    TableApplied,
)
from lvs_events.domain.render import render
from lvs_events.domain.state import State, observations


def _escape(c: str) -> str:
    if c.isprintable():
        return c
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def clean(text: str) -> str:
    """``text`` safe for a terminal: non-printable characters (controls, escape sequences,
    bidirectional overrides, line breaks) written as ``\\xNN`` / ``\\uNNNN``."""
    return text if text.isprintable() else "".join(_escape(c) for c in text)


def summary(event: Event) -> str:
    """What happened, in a few words (escaped: see :func:`clean`)."""
    return clean(_summary(event))


def _summary(event: Event) -> str:  # noqa: PLR0911 -- one return per payload type
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
    if isinstance(p, OverrideExpired):
        return f"override of revision {p.override_revision} on {p.virtual} -> {p.real} expired"
    raise TypeError(type(p))


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event_line(event: Event) -> str:
    """``REV  TIME  NODE  ACTOR  TYPE  SUMMARY  (why)`` — one readable line per event."""
    why = f"  reason={clean(repr(event.reason))}" if event.reason else ""
    term = f" term={event.term}" if event.term else ""
    return (
        f"{event.revision:>8}  {_time(event.wall_time)}  {clean(event.origin):<10} {clean(event.actor):<14} "
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


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as ``status`` shows it."""

    node: str
    applied_revision: int
    lag: int  # head revision - applied revision
    digest: str
    in_sync: bool  # its digest is the table's at the head
    last_seen: float  # wall time of its last report (TableApplied)
    silent: bool  # not heard for longer than the silence threshold


def node_views(state: State, head: int, now_digest: str, now: float, silent_after: float) -> list[NodeView]:
    """Every node that has reported. LAG is always ``head - applied``; a node is in sync when
    its table's digest is the one at the head (an agent reports its digest when it changes and
    every few seconds: a quiet log still shows a small lag, made of the reports themselves)."""
    return [
        NodeView(
            node,
            ns.applied_revision,
            max(0, head - ns.applied_revision),
            ns.digest,
            ns.digest == now_digest,
            ns.wall_time,
            now - ns.wall_time > silent_after,
        )
        for node, ns in sorted(state.nodes.items())
    ]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0.0, seconds):.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def status_text(
    state: State, head: int, now_digest: str, *, now: float | None = None, silent_after: float = 30.0
) -> str:
    """``lvs-events status``: nodes with their applied revision, lag, digest, sync and last
    report, then disagreements. ``now`` (unix seconds) defaults to the log's own clock."""
    clock = state.clock if now is None else now
    lines = [
        f"cluster {clean(state.cluster) or '-'}  head revision {head}  table digest {now_digest[:12]}",
        f"active: {clean(state.leader or '-')}  term {state.term}",
        "",
        f"{'NODE':<12} {'APPLIED':>8} {'LAG':>6}  {'DIGEST':<12}  {'IN SYNC':<7}  LAST SEEN",
    ]
    for n in node_views(state, head, now_digest, clock, silent_after):
        sync = "yes" if n.in_sync else "no"
        seen = _ago(clock - n.last_seen) + (f"  SILENT (> {silent_after:g}s)" if n.silent else "")
        lines.append(
            f"{clean(n.node):<12} {n.applied_revision:>8} {n.lag:>6}  {n.digest[:12]:<12}  {sync:<7}  {seen}"
        )
    if not state.nodes:
        lines.append("(no node has reported a table yet)")
    disagreements = []
    for (vk, rk), _views in sorted(state.health.items()):
        views = observations(state, vk, rk)
        if len({o.up for o in views.values()}) > 1:
            seen = ", ".join(f"{clean(n)}={'up' if o.up else 'down'}" for n, o in sorted(views.items()))
            disagreements.append(f"  {vk} -> {rk}: {seen}")
    if state.config_error:
        lines += ["", f"last refused config: {clean(state.config_error)}"]
    if disagreements:
        lines += ["", "health views that disagree:", *disagreements]
    return "\n".join(lines) + "\n"


def table_digest(state: State) -> str:
    return render(state).digest()
