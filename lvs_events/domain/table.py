"""The IPVS table as values, its digest, its diff, and its text in the ``ipvsadm -L -n`` layout.

Pure: used by the render (desired table), by every dataplane (actual table) and by the CLI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from lvs_events.domain.config import Family, Forwarding, Protocol, endpoint_text, service_key

FORWARD_NAMES = {Forwarding.GATE: "Route", Forwarding.MASQ: "Masq", Forwarding.IPIP: "Tunnel"}


# --- scheduler flags (``-b``; Service.schedflags) ------------------------------------------------

_SCHED1, _SCHED2, _SCHED3 = 0x0008, 0x0010, 0x0020  # the kernel's IP_VS_SVC_F_SCHED1..3

# ipvsadm's names for the scheduler flags (``-b``): sh and mh name the first two their own way.
SCHED_FLAG_BITS: dict[str, int] = {
    "flag-1": _SCHED1,
    "flag-2": _SCHED2,
    "flag-3": _SCHED3,
    "sh-fallback": _SCHED1,
    "sh-port": _SCHED2,
    "mh-fallback": _SCHED1,
    "mh-port": _SCHED2,
}


def sched_flag_bits(flags: Iterable[str]) -> int:
    """The IP_VS_SVC_F_SCHED* bits for flag names; ``ValueError`` on an unknown name."""
    bits = 0
    for name in flags:
        try:
            bits |= SCHED_FLAG_BITS[name]
        except KeyError:
            raise ValueError(f"unknown scheduler flag {name!r}") from None
    return bits


def sched_flag_names(scheduler: str, bits: int) -> tuple[str, ...]:
    """The names ipvsadm prints for ``bits`` under ``scheduler``, in its order."""
    prefix = scheduler if scheduler in ("sh", "mh") else None
    names: list[str] = []
    if bits & _SCHED1:
        names.append(f"{prefix}-fallback" if prefix else "flag-1")
    if bits & _SCHED2:
        names.append(f"{prefix}-port" if prefix else "flag-2")
    if bits & _SCHED3:
        names.append("flag-3")
    return tuple(names)


@dataclass(frozen=True, slots=True, order=True)
class Dest:
    address: str
    port: int
    forwarding: Forwarding = Forwarding.GATE
    weight: int = 1
    lower_threshold: int = 0
    upper_threshold: int = 0

    @property
    def key(self) -> str:
        return endpoint_text(self.address, self.port)


@dataclass(frozen=True, slots=True)
class Service:
    protocol: Protocol
    address: str | None
    port: int
    fwmark: int | None = None
    family: Family = Family.INET
    scheduler: str = "wrr"
    persistent: int | None = None
    netmask: str | None = None
    ops: bool = False
    schedflags: tuple[str, ...] = ()
    dests: tuple[Dest, ...] = field(default=())

    @property
    def key(self) -> str:
        return service_key(self.protocol, self.address, self.port, self.fwmark, self.family)

    def same_attributes(self, other: Service) -> bool:
        """True when only the destinations differ (no service edit needed)."""
        return (
            self.scheduler == other.scheduler
            and self.persistent == other.persistent
            and self.netmask == other.netmask
            and self.ops == other.ops
            and self.schedflags == other.schedflags
        )


@dataclass(frozen=True, slots=True)
class Table:
    services: tuple[Service, ...] = ()

    def service(self, key: str) -> Service | None:
        for s in self.services:
            if s.key == key:
                return s
        return None

    def to_json(self) -> list[dict[str, object]]:
        """Canonical JSON form: services by key, destinations by key. The digest hashes this."""
        return [service_json(s) for s in sorted(self.services, key=lambda s: s.key)]

    def digest(self) -> str:
        """sha256 of the canonical JSON: equal tables give equal digests on every node."""
        return digest_of_parts(service_digest_part(s) for s in sorted(self.services, key=lambda s: s.key))


def service_json(s: Service) -> dict[str, object]:
    """One service's element of :meth:`Table.to_json`."""
    return {
        "service": s.key,
        "protocol": s.protocol.value,
        "address": s.address,
        "port": s.port,
        "fwmark": s.fwmark,
        "family": int(s.family),
        "scheduler": s.scheduler,
        "persistent": s.persistent,
        "netmask": s.netmask,
        "ops": s.ops,
        "schedflags": list(s.schedflags),
        "dests": [dest_json(d) for d in sorted(s.dests, key=lambda d: d.key)],
    }


def dest_json(d: Dest) -> dict[str, object]:
    """One destination's element of :func:`service_json`."""
    return {
        "dest": d.key,
        "address": d.address,
        "port": d.port,
        "forward": d.forwarding.value,
        "weight": d.weight,
        "l_threshold": d.lower_threshold,
        "u_threshold": d.upper_threshold,
    }


def service_digest_part(s: Service) -> bytes:
    """One service's canonical JSON, as it appears inside the text :meth:`Table.digest` hashes."""
    return json.dumps(service_json(s), sort_keys=True, separators=(",", ":")).encode()


def dest_digest_part(d: Dest) -> bytes:
    """One destination's canonical JSON, as it appears inside :func:`service_digest_part`."""
    return json.dumps(dest_json(d), sort_keys=True, separators=(",", ":")).encode()


_DESTS_KEY = b'"dests":['


def service_digest_frame(s: Service) -> tuple[bytes, bytes]:
    """The canonical JSON of ``s`` around its destinations: ``service_digest_part(s)`` is
    ``prefix + b",".join(dest_digest_part(d) for d in dests by key) + suffix``, so a caller that
    keeps one part per destination re-encodes only the destinations that changed."""
    empty = service_digest_part(replace(s, dests=()))
    # The first occurrence is the key: inside a JSON string every '"' is escaped, so '"dests":['
    # cannot occur there (and "address", the only key before it, is a string or null).
    at = empty.index(_DESTS_KEY + b"]") + len(_DESTS_KEY)
    return empty[:at], empty[at:]


def digest_of_parts(parts: Iterable[bytes]) -> str:
    """:meth:`Table.digest` from :func:`service_digest_part` of each service, in key order (a
    caller that keeps the parts re-encodes only the services that changed). The parts are hashed
    as they are, not copied into one text (a service of 10,000 destinations is a megabyte)."""
    h = hashlib.sha256(b"[")
    for i, part in enumerate(parts):
        if i:
            h.update(b",")
        h.update(part)
    h.update(b"]")
    return h.hexdigest()


def table_from_json(data: Iterable[dict[str, object]]) -> Table:
    """Inverse of :meth:`Table.to_json` (used by the CLI for ``-o json`` round trips and tests)."""
    services: list[Service] = []
    for s in data:
        dests = tuple(
            Dest(
                address=str(d["address"]),
                port=_int(d["port"]),
                forwarding=Forwarding(str(d["forward"])),
                weight=_int(d["weight"]),
                lower_threshold=_int(d["l_threshold"]),
                upper_threshold=_int(d["u_threshold"]),
            )
            for d in _dicts(s["dests"])
        )
        services.append(
            Service(
                protocol=Protocol(str(s["protocol"])),
                address=None if s["address"] is None else str(s["address"]),
                port=_int(s["port"]),
                fwmark=None if s["fwmark"] is None else _int(s["fwmark"]),
                family=Family(_int(s["family"])),
                scheduler=str(s["scheduler"]),
                persistent=None if s["persistent"] is None else _int(s["persistent"]),
                netmask=None if s["netmask"] is None else str(s["netmask"]),
                ops=bool(s["ops"]),
                schedflags=tuple(str(f) for f in _list(s["schedflags"])),
                dests=dests,
            )
        )
    return Table(tuple(services))


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _list(v: object) -> list[object]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list, got {v!r}")
    return v


def _dicts(v: object) -> list[dict[str, object]]:
    items = _list(v)
    for i in items:
        if not isinstance(i, dict):
            raise TypeError(f"expected an object, got {i!r}")
    return items  # type: ignore[return-value]  # checked element by element above


# --- diff -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One dataplane operation. ``kind``: add-service, edit-service, del-service, add-dest,
    edit-dest, del-dest. ``service`` is always the desired (or, for deletes, actual) service."""

    kind: str
    service: Service
    dest: Dest | None = None

    def __str__(self) -> str:
        if self.dest is None:
            return f"{self.kind} {self.service.key}"
        return f"{self.kind} {self.service.key} -> {self.dest.key} w={self.dest.weight}"


@dataclass(frozen=True, slots=True)
class DestChanges:
    """A service as a change of an earlier one, ``base`` (same attributes): the destinations with
    these keys are now the ones given (None: not there), every other destination is the same."""

    base: Service
    dests: Mapping[str, Dest | None]


class ServiceChanges(dict[str, Service | None]):
    """Services to reconcile by key (``None``: the service must not exist), with, for some, how
    each differs from the service the dataplane was last verified to hold (``deltas``, by key): a
    dataplane that knows it still holds exactly that ``base`` object applies just those
    destinations, O(changes) for a service of 10,000; any other dataplane reads a plain mapping."""

    __slots__ = ("deltas",)

    def __init__(
        self, services: Mapping[str, Service | None], deltas: Mapping[str, DestChanges] | None = None
    ) -> None:
        super().__init__(services)
        self.deltas: dict[str, DestChanges] = dict(deltas or {})


# The order :func:`diff` gives operations in (a stable sort by it merges two diffs' operations).
OP_RANK = {
    "add-service": 0,
    "add-dest": 0,
    "edit-service": 1,
    "edit-dest": 1,
    "del-dest": 2,
    "del-service": 3,
}


def diff(actual: Table, desired: Table) -> list[Op]:
    """The minimal operations that turn ``actual`` into ``desired``.

    Order never drops traffic needlessly: new services and destinations first, then edits
    (weights), then destination removals, then service removals.
    """
    have = {s.key: s for s in actual.services}
    want: dict[str, Service | None] = {s.key: s for s in desired.services}
    want.update((key, None) for key in have if key not in want)
    return diff_services(have, want)


def diff_services(have: Mapping[str, Service], want: Mapping[str, Service | None]) -> list[Op]:
    """:func:`diff` of only the services named in ``want`` (``None``: the service must not exist),
    in the same order; O(size of ``want``). ``have``: the actual services by key."""
    adds: list[Op] = []
    edits: list[Op] = []
    dels: list[Op] = []
    svc_dels: list[Op] = []
    for key, ws in want.items():
        hs = have.get(key)
        if ws is None:
            if hs is not None:
                svc_dels.append(Op("del-service", hs))
            continue
        if hs is None:
            adds.append(Op("add-service", ws))
            adds.extend(Op("add-dest", ws, d) for d in ws.dests)
            continue
        if not ws.same_attributes(hs):
            edits.append(Op("edit-service", ws))
        new, gone = changed_dests(hs.dests, ws.dests)
        if not new and not gone:
            continue
        hd = {d.key: d for d in gone}
        wd = {d.key: d for d in new}
        for dk, d in wd.items():
            cur = hd.get(dk)
            if cur is None:
                adds.append(Op("add-dest", ws, d))
            elif cur != d:
                edits.append(Op("edit-dest", ws, d))
        dels.extend(Op("del-dest", hs, d) for dk, d in hd.items() if dk not in wd)
    return adds + edits + dels + svc_dels


def changed_dests(have: tuple[Dest, ...], want: tuple[Dest, ...]) -> tuple[list[Dest], list[Dest]]:
    """The destinations of ``want`` that are not the very same objects in ``have`` and those of
    ``have`` not in ``want``, each in its order: all a comparison by key has to look at when the
    keys are unique within each (as in any table). The incremental render keeps the objects of
    the real servers that did not change, so for a service of 10,000 destinations this is a
    scan at C speed plus O(changes), instead of 20,000 keys formatted."""
    if have is want or have == want:  # element by element, identity first
        return [], []
    have_ids = set(map(id, have))
    want_ids = set(map(id, want))
    return [d for d in want if id(d) not in have_ids], [d for d in have if id(d) not in want_ids]


def same_service(a: Service | None, b: Service | None) -> bool:
    """Equal as the kernel sees them: attributes and destinations, whatever the order."""
    if a is None or b is None:
        return a is b
    if a is b:
        return True
    if a.key != b.key or not a.same_attributes(b) or len(a.dests) != len(b.dests):
        return False
    new, gone = changed_dests(a.dests, b.dests)
    return {d.key: d for d in gone} == {d.key: d for d in new}


def apply_ops(table: Table, ops: Iterable[Op]) -> Table:
    """Apply operations to a table value (the in-memory dataplane, and tests of ``diff``)."""
    services: dict[str, Service] = {s.key: s for s in table.services}
    apply_ops_to(services, ops)
    return Table(tuple(services.values()))


def apply_ops_to(services: dict[str, Service], ops: Iterable[Op]) -> None:  # noqa: PLR0912 -- one branch per op kind
    """Apply operations to services by key, in place (new services go last); O(ops).

    ``ValueError`` on an operation that does not apply (``services`` is then partly updated).
    """
    # Destinations being edited, per service, kept as dicts until the end (a service of n
    # destinations built up by n add-dest ops costs O(n), not O(n^2)).
    working: dict[str, dict[str, Dest]] = {}
    for op in ops:
        key = op.service.key
        cur = services.get(key)
        if op.kind == "add-service":
            if cur is not None:
                raise ValueError(f"service {key} exists")
            services[key] = replace(op.service, dests=())
            working.pop(key, None)
        elif op.kind == "edit-service":
            if cur is None:
                raise ValueError(f"no service {key}")
            services[key] = replace(op.service, dests=cur.dests)
        elif op.kind == "del-service":
            if cur is None:
                raise ValueError(f"no service {key}")
            del services[key]
            working.pop(key, None)
        else:
            if cur is None or op.dest is None:
                raise ValueError(f"no service {key} for {op}")
            dests = working.get(key)
            if dests is None:
                dests = working[key] = {d.key: d for d in cur.dests}
            dk = op.dest.key
            if op.kind == "add-dest" and dk in dests:
                raise ValueError(f"destination {dk} exists in {key}")
            if op.kind in ("edit-dest", "del-dest") and dk not in dests:
                raise ValueError(f"no destination {dk} in {key}")
            if op.kind == "del-dest":
                del dests[dk]
            else:
                dests[dk] = op.dest
    for key, dests in working.items():
        services[key] = replace(services[key], dests=tuple(dests.values()))


# --- ipvsadm -L -n ---------------------------------------------------------------------------


def format_ipvsadm(table: Table, *, header: bool = True) -> str:
    """The table in the layout of ``ipvsadm -L -n`` (connection counters are 0: not tracked)."""
    lines: list[str] = []
    if header:
        lines.append("IP Virtual Server version 1.2.1 (size=4096)")
        lines.append("Prot LocalAddress:Port Scheduler Flags")
        lines.append("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn")
    for s in table.services:
        if s.protocol is Protocol.FWM or s.fwmark is not None:
            name = f"{s.fwmark}" + (" IPv6" if s.family is Family.INET6 else "")
            proto = "FWM"
        else:
            name = endpoint_text(s.address or "", s.port)
            proto = s.protocol.value.upper()
        line = f"{proto}  {name} {s.scheduler}"
        if s.schedflags:
            line += f" ({','.join(s.schedflags)})"
        if s.persistent is not None:
            line += f" persistent {s.persistent}"
            if s.netmask is not None:
                line += f" mask {s.netmask}"
        if s.ops:
            line += " ops"
        lines.append(line)
        for d in s.dests:
            fwd = FORWARD_NAMES[d.forwarding]
            lines.append(f"  -> {d.key:<28} {fwd:<7} {d.weight:<6} {0:<10} {0:<10}".rstrip())
    return "\n".join(lines) + "\n"
