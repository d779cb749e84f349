"""The render: folded state -> desired IPVS table, with ldirectord's semantics.

For each virtual service in the config in force, each real server is:

* **up** (a passing check, ``checktype=on``): present at its configured weight, or at the operator's
  weight (``AdminOverride`` weight), or at 0 when the operator drained it;
* **down** (a failing check, ``checktype=off``, or not checked yet, as ldirectord adds a server only
  after its first good check): present at weight 0 when ``quiescent=yes``, absent otherwise;
* **disabled** by the operator: absent.

The fallback server is present only while no real server of the service is available (present
with a weight above 0), as ldirectord does. The virtual service itself is always present.

The table is the one the kernel gives back when dumped, so that a dump equals the render:
direct-routing and tunnelled real servers take the virtual service's port (``ipvsadm`` forces it,
except for firewall-mark services), a persistence netmask equal to the default (``/32``,
``128``) or without persistence is none, scheduler flags go by the names the kernel's bits read
back as (``flag-1`` under ``sh`` is ``sh-fallback``).

:func:`render_changed` re-renders only the virtual services an event touched
(:func:`touched_virtuals`, :func:`expiring_virtuals`): the agent's per-event path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from lvs_events.domain.config import Config, Family, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    ConfigApplied,
    Event,
    Leadership,
    RealServerHealth,
)
from lvs_events.domain.ipvsadm_save import SCHED_FLAG_BITS, sched_flag_bits, sched_flag_names
from lvs_events.domain.state import State, effective_health
from lvs_events.domain.table import Dest, Service, Table


def render(state: State) -> Table:
    cfg = state.config
    if cfg is None:
        return Table()
    return Table(tuple(render_virtual(state, cfg, v) for v in cfg.virtuals))


def render_virtual(state: State, cfg: Config, v: VirtualService) -> Service:
    """One virtual service of the desired table (``render`` is this for every virtual, in order)."""
    quiescent = cfg.globals.quiescent if v.quiescent is None else v.quiescent
    dests: list[Dest] = []
    seen: set[str] = set()
    vkey = v.key  # formatted once per service, not once per real (10,000 reals in one service)
    for r in v.reals:
        d = _render_real(state, v, r, quiescent, vkey)
        if d is not None and d.key not in seen:  # two reals ipvsadm makes one: the first wins
            seen.add(d.key)
            dests.append(d)
    if not any(d.weight > 0 for d in dests):
        fb = fallback_for(cfg, v)
        if fb is not None:
            fd = _dest(v, fb, fb.weight)
            if fd.key not in seen:
                dests.append(fd)
    persistent = v.persistent
    return Service(
        protocol=v.protocol,
        address=v.address,
        port=v.port,
        fwmark=v.fwmark,
        family=v.family,
        scheduler=v.scheduler,
        persistent=persistent,
        netmask=None if persistent is None else normalized_netmask(v.family, v.netmask),
        ops=v.ops,
        schedflags=kernel_schedflags(v.scheduler, v.schedflags),
        dests=tuple(dests),
    )


# --- incremental render --------------------------------------------------------------------------


def virtual_positions(cfg: Config | None) -> dict[str, tuple[int, ...]]:
    """Virtual service key -> its position(s) in ``cfg.virtuals`` (= in the rendered table)."""
    out: dict[str, tuple[int, ...]] = {}
    for i, v in enumerate(cfg.virtuals if cfg is not None else ()):
        out[v.key] = (*out.get(v.key, ()), i)
    return out


def render_changed(
    state: State,
    prev: Table,
    virtual_keys: Iterable[str],
    positions: Mapping[str, tuple[int, ...]] | None = None,
) -> Table:
    """``render(state)``, re-rendering only the virtual services named in ``virtual_keys``.

    ``prev`` must be the render of an earlier state with the *same* ``state.config`` object, and
    ``virtual_keys`` must name every virtual service whose rendering may differ since then (see
    :func:`touched_virtuals` and :func:`expiring_virtuals`); every other service of ``prev`` is
    kept as it is (the same object). ``positions``: :func:`virtual_positions` of the config,
    computed once per config by the caller, so the work is O(changed), not O(table).
    """
    cfg = state.config
    if cfg is None:
        return Table()
    if positions is None:
        positions = virtual_positions(cfg)
    services = list(prev.services)
    if len(services) != len(cfg.virtuals):
        raise ValueError("render_changed: prev is not a render of this config")
    for key in virtual_keys:
        for i in positions.get(key, ()):
            services[i] = render_virtual(state, cfg, cfg.virtuals[i])
    return Table(tuple(services))


def touched_virtuals(event: Event) -> frozenset[str] | None:
    """The virtual services whose rendering ``event`` may change; None: any (config, leader).

    The clock an event advances can also end an operator's timed override elsewhere: see
    :func:`expiring_virtuals`.
    """
    p = event.payload
    if isinstance(p, (RealServerHealth, AdminOverride)):
        return frozenset((p.virtual,))
    if isinstance(p, (ConfigApplied, Leadership)):
        return None
    return frozenset()


def expiring_virtuals(state: State, after: float, until: float) -> set[str]:
    """Virtual services with an operator override that expires in ``(after, until]``."""
    if until <= after:
        return set()
    return {vk for (vk, _rk), ov in state.overrides.items() if after < ov.expires_at <= until}


# --- what the kernel gives back --------------------------------------------------------------------


def normalized_netmask(family: Family, netmask: str | None) -> str | None:
    """The persistence netmask as a kernel dump reads back: the default (``255.255.255.255``,
    ``128``) is None, an IPv4 mask in canonical dotted form, an IPv6 prefix length as a number."""
    if netmask is None:
        return None
    text = netmask.strip()
    try:
        if family is Family.INET6:
            n = int(text.removeprefix("/"))
            return None if n == 128 else str(n)
        mask = str(ipaddress.IPv4Address(text))
    except ValueError:
        return netmask  # not a mask: the dataplane refuses it, visibly
    return None if mask == "255.255.255.255" else mask


def kernel_schedflags(scheduler: str, flags: tuple[str, ...]) -> tuple[str, ...]:
    """Scheduler flags by the names the kernel's flag bits read back as under ``scheduler``
    (``flag-1`` under ``sh`` is ``sh-fallback``; duplicates and order do not matter). A name
    ipvsadm does not know is kept as it is, so that applying it fails visibly."""
    if not flags:
        return ()
    known = tuple(f for f in flags if f in SCHED_FLAG_BITS)
    unknown = tuple(f for f in flags if f not in SCHED_FLAG_BITS)
    return sched_flag_names(scheduler, sched_flag_bits(known)) + unknown


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
        if not command or fb is None:
            continue
        svc = table.service(v.key)
        if svc is None:
            continue
        fb_key = _dest(v, fb, fb.weight).key
        active = any(d.key == fb_key for d in svc.dests) and not any(
            d.weight > 0 and d.key != fb_key for d in svc.dests
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


def _render_real(state: State, v: VirtualService, r: RealServer, quiescent: bool, vkey: str) -> Dest | None:
    rkey = r.key
    ov = state.overrides.get((vkey, rkey)) if state.overrides else None
    if ov is not None and not ov.active(state.clock):
        ov = None
    if ov is not None and ov.action is AdminAction.DISABLE:
        return None
    checktype = v.check.checktype
    if checktype == "on":
        up = True
    elif checktype == "off":
        up = False
    else:  # real_is_up, inlined with the keys already made
        obs = effective_health(state, vkey, rkey)
        up = obs is not None and obs.up
    if not up:
        return _dest(v, r, 0) if quiescent else None
    weight = r.weight
    if ov is not None:
        if ov.action is AdminAction.DRAIN:
            weight = 0
        elif ov.action is AdminAction.WEIGHT:
            weight = ov.weight
    return _dest(v, r, weight)


def _dest(v: VirtualService, r: RealServer, weight: int) -> Dest:
    # ipvsadm: with direct routing or tunnelling the real server's port is the virtual service's
    # (except for a firewall-mark service), whatever the command line said.
    port = r.port
    if r.forwarding is not Forwarding.MASQ and v.fwmark is None and v.protocol is not Protocol.FWM:
        port = v.port
    return Dest(r.address, port, r.forwarding, weight, r.lower_threshold, r.upper_threshold)
