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

from dataclasses import dataclass, replace

from lvs_events.domain.config import Config, Family, RealServer, VirtualService
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
            fb = fallback_for(cfg, v)
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


def fallback_for(cfg: Config, v: VirtualService) -> RealServer | None:
    """The virtual's own fallback, else the global one (``fallback6`` for IPv6); a global
    fallback without a port takes the virtual service's port, as ldirectord does."""
    if v.fallback is not None:
        return v.fallback
    fb = cfg.globals.fallback6 if v.family is Family.INET6 else cfg.globals.fallback
    if fb is not None and fb.port == 0 and v.port:
        fb = replace(fb, port=v.port)
    return fb


@dataclass(frozen=True, slots=True)
class FallbackCommand:
    """``fallbackcommand``: run with ``start`` when the fallback enters a service's table and
    ``stop`` when it leaves, with ldirectord's arguments ``<start|stop> <vip>:<port> <protocol>``."""

    virtual: str
    command: str
    active: bool
    args: tuple[str, ...]


def fallback_commands(state: State, table: Table) -> dict[str, FallbackCommand]:
    """For every virtual service with a ``fallbackcommand``: is its fallback serving now?"""
    cfg = state.config
    if cfg is None:
        return {}
    out: dict[str, FallbackCommand] = {}
    for v in cfg.virtuals:
        command = v.fallbackcommand or cfg.globals.fallbackcommand
        fb = fallback_for(cfg, v)
        svc = table.service(v.key)
        if not command or fb is None or svc is None:
            continue
        active = any(d.key == fb.key for d in svc.dests) and not any(
            d.weight > 0 and d.key != fb.key for d in svc.dests
        )
        where = f"{v.fwmark}" if v.fwmark is not None else f"{v.address}:{v.port}"
        status = "start" if active else "stop"
        out[v.key] = FallbackCommand(v.key, command, active, (status, where, v.protocol.value))
    return out


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
