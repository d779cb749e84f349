"""The render: folded state -> desired IPVS table, with ldirectord's semantics.

For each virtual service in the config in force, each real server is:

* **up** (a passing check, ``checktype=on``): present at its configured weight, or at the operator's
  weight (``AdminOverride`` weight), or at 0 when the operator drained it;
* **down** (a failing check, ``checktype=off``, or not checked yet, as ldirectord adds a server only
  after its first good check): present at weight 0 when ``quiescent=yes``, absent otherwise;
* **disabled** by the operator: absent.

The check verdict followed is the active director's, unless its checker says it is degraded and
another node's is not (:func:`followed_health`).

The fallback server is present only while no real server of the service is available (present
with a weight above 0), as ldirectord does. The virtual service itself is always present.

The table is the one the kernel gives back when dumped, so that a dump equals the render:
direct-routing and tunnelled real servers take the virtual service's port (``ipvsadm`` forces it,
except for firewall-mark services), a persistence netmask equal to the default (``/32``,
``128``) or without persistence is none, scheduler flags go by the names the kernel's bits read
back as (``flag-1`` under ``sh`` is ``sh-fallback``).

:class:`TableRenderer` keeps ``render(state)`` up to date per real server: it re-renders only
the real servers an event touched (:func:`touched_reals`, :func:`expiring_reals`) and patches their
services and the digest's canonical JSON, so one event costs O(1) in Python whatever the size of
its service (the agent's per-event path; a virtual service may hold 10,000 real servers).
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Iterable
from dataclasses import dataclass, replace

from lvs_events.domain.config import Config, Family, Forwarding, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    CheckerHealth,
    ConfigApplied,
    Event,
    Leadership,
    OverrideExpired,
    RealServerHealth,
)
from lvs_events.domain.state import Observation, RealKey, State, checker_degraded, effective_health
from lvs_events.domain.table import (
    SCHED_FLAG_BITS,
    Dest,
    Service,
    Table,
    dest_digest_part,
    digest_of_parts,
    sched_flag_bits,
    sched_flag_names,
    service_digest_frame,
)


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
    return _service(v, tuple(dests))


def _service(v: VirtualService, dests: tuple[Dest, ...]) -> Service:
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
        dests=dests,
    )


# --- incremental render --------------------------------------------------------------------------


def virtual_positions(cfg: Config | None) -> dict[str, tuple[int, ...]]:
    """Virtual service key -> its position(s) in ``cfg.virtuals`` (= in the rendered table)."""
    out: dict[str, tuple[int, ...]] = {}
    for i, v in enumerate(cfg.virtuals if cfg is not None else ()):
        out[v.key] = (*out.get(v.key, ()), i)
    return out


def touched_reals(event: Event) -> frozenset[RealKey] | None:
    """The (virtual, real) pairs whose rendering ``event`` may change; None: any (config, leader,
    a checker's health: which node's view the table follows).

    The clock an event advances can also end an operator's timed override elsewhere: see
    :func:`expiring_reals`.
    """
    p = event.payload
    if isinstance(p, (RealServerHealth, AdminOverride, OverrideExpired)):
        return frozenset(((p.virtual, p.real),))
    if isinstance(p, (ConfigApplied, Leadership, CheckerHealth)):
        return None
    return frozenset()


def expiring_reals(state: State, after: float, until: float) -> set[RealKey]:
    """The (virtual, real) pairs with an operator override that expires in ``(after, until]``."""
    if until <= after or not state.overrides:
        return set()
    return {key for key, ov in state.overrides.items() if after < ov.expires_at <= until}


class TableRenderer:
    """``render(state)``, kept up to date per real server (the agent's per-event path).

    Built from a state (a full render, plus the canonical JSON of every destination); then
    :meth:`update` re-renders only the real servers named, for a later state with the *same*
    config object, and patches their services: ``table`` and :meth:`digest` always equal
    ``render(state)`` and ``render(state).digest()`` (property-tested against the plain render).
    The caller names every real server whose rendering may differ since the last update: each
    event's :func:`touched_reals` and the :func:`expiring_reals` of the clock's advance; anything
    else (a new config, a leader change, a snapshot) means a new renderer.

    An update costs O(real servers named) in Python, plus copies at C speed of its services'
    destination tuples and JSON. The destinations of the real servers that did not change stay
    the same objects, so a diff against the table applied before (``table.changed_dests``) looks
    only at those that did.
    """

    __slots__ = ("_order", "_parts", "_positions", "_virtuals", "config", "table")

    def __init__(self, state: State) -> None:
        cfg = self.config = state.config
        self._virtuals = [_VirtualRenderer(state, cfg, v) for v in cfg.virtuals] if cfg is not None else []
        self._positions = virtual_positions(cfg)
        self.table = Table(tuple(vr.service for vr in self._virtuals))
        self._parts = [vr.part for vr in self._virtuals]
        # the digest's order: by key (a stable sort: a key the config has twice, by position)
        self._order = sorted(range(len(self._virtuals)), key=lambda i: self._virtuals[i].key)

    def update(self, state: State, reals: Iterable[RealKey]) -> dict[int, set[str]]:
        """Re-render the real servers ``reals`` (virtual key, real key) at ``state``. Returns, for
        each service that changed (by position: ``table.services[i]`` is then a new object), the
        keys of the destinations that may differ from before (see :meth:`dest`); every other
        destination is the very same object. Pairs naming no configured real server change nothing."""
        if state.config is not self.config:
            raise ValueError("TableRenderer.update: another config (build a new renderer)")
        by_virtual: dict[str, list[str]] = {}
        for vk, rk in reals:
            by_virtual.setdefault(vk, []).append(rk)
        changed: dict[int, set[str]] = {}
        for vk, rks in by_virtual.items():
            for i in self._positions.get(vk, ()):
                keys = self._virtuals[i].update(state, rks)
                if keys:
                    changed[i] = keys
        if changed:
            services = list(self.table.services)
            parts = list(self._parts)  # a new list: parts handed out earlier stay as they were
            for i in changed:
                services[i] = self._virtuals[i].service
                parts[i] = self._virtuals[i].part
            self.table = Table(tuple(services))
            self._parts = parts
        return changed

    def dest(self, position: int, key: str) -> Dest | None:
        """The destination with this key in the service at ``position`` (None: not there)."""
        return self._virtuals[position].dest(key)

    def digest_parts(self) -> list[bytes]:
        """Each service's canonical JSON in the digest's order (``digest_of_parts`` of it is
        :meth:`digest`); a new list of immutable parts, so hashing it later is safe."""
        parts = self._parts
        return [parts[i] for i in self._order]

    def digest(self) -> str:
        return digest_of_parts(self.digest_parts())


def _counts(d: Dest | None) -> int:
    """1 when ``d`` is in the table with a weight above 0 (it keeps the fallback out)."""
    return 1 if d is not None and d.weight > 0 else 0


class _VirtualRenderer:
    """One virtual service of a :class:`TableRenderer`: :func:`render_virtual`, per real server.

    Per real server (by position in ``v.reals``): its rendering (``raw``) and whether it is the one
    that enters the table (``eff``): two real servers that make the same destination (same address,
    and the port direct routing forces) enter once, the first present one wins, as in
    ``render_virtual``. The service's destinations are the winners in config order, then the
    fallback while no winner has a weight above 0 (``positive`` counts them) and no winner holds the
    fallback's address. The digest's JSON is kept as one part per destination key, in key order
    (empty: no destination there), between the service's fixed prefix and suffix.
    """

    __slots__ = (
        "by_real",
        "dest_keys",
        "eff",
        "fb",
        "fb_on",
        "fb_part",
        "fb_slot",
        "groups",
        "key",
        "part",
        "parts",
        "positive",
        "prefix",
        "quiescent",
        "raw",
        "service",
        "slots",
        "suffix",
        "template",
        "v",
    )

    def __init__(self, state: State, cfg: Config, v: VirtualService) -> None:
        self.v = v
        self.key = vkey = v.key
        quiescent = self.quiescent = cfg.globals.quiescent if v.quiescent is None else v.quiescent
        self.by_real: dict[str, list[int]] = {}
        self.groups: dict[str, list[int]] = {}  # destination key -> the reals that make it
        self.dest_keys: list[str] = []
        self.raw: list[Dest | None] = []
        self.eff: list[Dest | None] = []
        for i, r in enumerate(v.reals):
            self.by_real.setdefault(r.key, []).append(i)
            d = _render_real(state, v, r, quiescent, vkey)
            dk = _dest(v, r, 0).key
            self.dest_keys.append(dk)
            group = self.groups.setdefault(dk, [])
            won = not any(self.raw[j] is not None for j in group)
            group.append(i)
            self.raw.append(d)
            self.eff.append(d if won else None)
        self.positive = sum(1 for d in self.eff if d is not None and d.weight > 0)
        fb = fallback_for(cfg, v)
        self.fb = None if fb is None else _dest(v, fb, fb.weight)
        self.template = _service(v, ())
        self.prefix, self.suffix = service_digest_frame(self.template)
        keys = sorted({*self.groups, *(() if self.fb is None else (self.fb.key,))})
        self.slots = {k: n for n, k in enumerate(keys)}
        self.parts = [b""] * len(keys)
        for d in self.eff:
            if d is not None:
                self.parts[self.slots[d.key]] = dest_digest_part(d)
        self.fb_slot = -1 if self.fb is None else self.slots[self.fb.key]
        self.fb_part = b"" if self.fb is None else dest_digest_part(self.fb)
        self.fb_on = self._fallback_active()
        self._fallback_part()
        self.service = self.template
        self.part = b""
        self._build()

    def update(self, state: State, reals: Iterable[str]) -> set[str]:
        """Re-render the real servers with these keys; returns the keys of the destinations that
        may have changed (empty: the service is the same object)."""
        v, raw = self.v, self.raw
        dirty: set[str] = set()
        for rk in reals:
            for i in self.by_real.get(rk, ()):
                d = _render_real(state, v, v.reals[i], self.quiescent, self.key)
                if d != raw[i]:  # an equal rendering keeps its object (and the table its service)
                    raw[i] = d
                    dirty.add(self.dest_keys[i])
        if not dirty:
            return dirty
        eff, parts = self.eff, self.parts
        for dk in dirty:
            group = self.groups[dk]
            winner = next((j for j in group if raw[j] is not None), -1)
            for j in group:
                new = raw[j] if j == winner else None
                old = eff[j]
                if new is not old:
                    self.positive += _counts(new) - _counts(old)
                    eff[j] = new
            w = raw[winner] if winner >= 0 else None
            parts[self.slots[dk]] = b"" if w is None else dest_digest_part(w)
        fb_on = self._fallback_active()
        if fb_on != self.fb_on:
            self.fb_on = fb_on
            assert self.fb is not None
            dirty.add(self.fb.key)
        self._fallback_part()
        return dirty if self._build() else set()

    def dest(self, key: str) -> Dest | None:
        for j in self.groups.get(key, ()):
            if self.eff[j] is not None:
                return self.eff[j]
        fb = self.fb
        return fb if fb is not None and self.fb_on and fb.key == key else None

    def _fallback_active(self) -> bool:
        fb = self.fb
        if fb is None or self.positive:
            return False
        return not any(self.eff[j] is not None for j in self.groups.get(fb.key, ()))

    def _fallback_part(self) -> None:
        """The fallback's digest part, when no real server holds its destination key."""
        fb = self.fb
        if fb is None or any(self.eff[j] is not None for j in self.groups.get(fb.key, ())):
            return
        self.parts[self.fb_slot] = self.fb_part if self.fb_on else b""

    def _build(self) -> bool:
        """The service and its digest part from the slots; False (and nothing replaced) when its
        destinations are the same as before."""
        # filter(None, ...): a Dest is always true (a dataclass without __bool__ or __len__), and
        # an empty part stands for no destination; both scans run at C speed
        dests = tuple(filter(None, self.eff))
        if self.fb_on:
            assert self.fb is not None
            dests += (self.fb,)
        old = self.service.dests
        if self.part and len(dests) == len(old) and all(map(operator.is_, dests, old)):  # C speed
            return False  # the very same destinations (an equal one from another real is a change)
        self.service = replace(self.template, dests=dests)
        self.part = b"".join((self.prefix, b",".join(filter(None, self.parts)), self.suffix))
        return True


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
    services: dict[str, Service] | None = None  # by key, built once (not a scan per virtual)
    for v in cfg.virtuals:
        command = v.fallbackcommand or cfg.globals.fallbackcommand
        fb = fallback_for(cfg, v)
        if not command or fb is None:
            continue
        if services is None:
            services = {s.key: s for s in table.services}
        svc = services.get(v.key)
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


def followed_health(state: State, virtual: str, real: str) -> Observation | None:
    """The verdict the table follows for one real server.

    :func:`lvs_events.domain.state.effective_health` (the active director's view, else the most
    recent), except that the view of a node whose checker says it is degraded (behind schedule,
    inconclusive checks: ``CheckerHealth``) gives way to the most recent view of a node whose
    checker is not. With no such view, the degraded one is still followed: it is the best there is.
    """
    checkers = state.checkers
    if not checkers or not any(c.degraded for c in checkers.values()):
        return effective_health(state, virtual, real)
    views = state.health.get((virtual, real))
    if views is None:
        return None
    leader = state.leader
    if leader is not None:
        obs = views.get(leader)
        if obs is not None and not checker_degraded(state, leader):
            return obs
    healthy = [o for node, o in views.items() if not checker_degraded(state, node)]
    if healthy:
        return max(healthy, key=lambda o: o.revision)
    return effective_health(state, virtual, real)


def real_is_up(state: State, v: VirtualService, r: RealServer) -> bool:
    """The health the table follows (check verdict, or the ``on`` / ``off`` check types)."""
    checktype = v.check.checktype
    if checktype == "on":
        return True
    if checktype == "off":
        return False
    obs = followed_health(state, v.key, r.key)
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
        obs = followed_health(state, vkey, rkey)
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
