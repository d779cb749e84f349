"""The render: folded state -> desired IPVS table, with ldirectord's semantics.

For each virtual service in the config in force, each real server is:

* **up** (a passing check, ``checktype=on``): present at its configured weight, or at the operator's
  weight (``AdminOverride`` weight), or at 0 when the operator drained it;
* **down** (a failing check, ``checktype=off``, or not checked yet, as ldirectord adds a server only
  after its first good check): present at weight 0 when ``quiescent=yes``, absent otherwise;
* **disabled** by the operator: absent.

The fallback server is present only while no real server of the service is available (present
with a weight above 0), as ldirectord does. The virtual service itself is always present.
"""

from __future__ import annotations

from lvs_events.domain.config import RealServer, VirtualService
from lvs_events.domain.events import AdminAction
from lvs_events.domain.state import State, effective_health
from lvs_events.domain.table import Dest, Service, Table


def render(state: State) -> Table:
    cfg = state.config
    if cfg is None:
        return Table()
    g = cfg.globals
    services: list[Service] = []
    for v in cfg.virtuals:
        quiescent = g.quiescent if v.quiescent is None else v.quiescent
        dests: list[Dest] = []
        for r in v.reals:
            d = _render_real(state, v, r, quiescent)
            if d is not None:
                dests.append(d)
        if not any(d.weight > 0 for d in dests):
            fb = v.fallback or (g.fallback6 if ":" in (v.address or "") else g.fallback)
            if fb is not None and all(d.key != fb.key for d in dests):
                dests.append(_dest(fb, fb.weight))
        services.append(
            Service(
                protocol=v.protocol,
                address=v.address,
                port=v.port,
                fwmark=v.fwmark,
                family=v.family,
                scheduler=v.scheduler,
                persistent=v.persistent,
                netmask=v.netmask,
                ops=v.ops,
                schedflags=v.schedflags,
                dests=tuple(dests),
            )
        )
    return Table(tuple(services))


def real_is_up(state: State, v: VirtualService, r: RealServer) -> bool:
    """The health the table follows (check verdict, or the ``on`` / ``off`` check types)."""
    checktype = v.check.checktype
    if checktype == "on":
        return True
    if checktype == "off":
        return False
    obs = effective_health(state, v.key, r.key)
    return obs is not None and obs.up


def _render_real(state: State, v: VirtualService, r: RealServer, quiescent: bool) -> Dest | None:
    ov = state.overrides.get((v.key, r.key))
    if ov is not None and not ov.active(state.clock):
        ov = None
    if ov is not None and ov.action is AdminAction.DISABLE:
        return None
    if not real_is_up(state, v, r):
        return _dest(r, 0) if quiescent else None
    weight = r.weight
    if ov is not None:
        if ov.action is AdminAction.DRAIN:
            weight = 0
        elif ov.action is AdminAction.WEIGHT:
            weight = ov.weight
    return _dest(r, weight)


def _dest(r: RealServer, weight: int) -> Dest:
    return Dest(r.address, r.port, r.forwarding, weight, r.lower_threshold, r.upper_threshold)
