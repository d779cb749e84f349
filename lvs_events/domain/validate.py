"""Validation of events before they enter the log. Pure.

The coordinator runs :func:`validate_event` on every append and refuses (INVALID_ARGUMENT) what
fails; nothing of a refused event is stored. Messages name the field and what was expected.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re

from lvs_events.domain.config import Config, Family, Protocol, RealServer, VirtualService
from lvs_events.domain.events import (
    AdminAction,
    AdminOverride,
    CheckerHealth,
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
from lvs_events.errors import InvalidEvent

# The chain of limits (docs/ARCHITECTURE.md "Limits"): an event of at most MAX_EVENT_BYTES (plus
# its 70 bytes of chain hashes) < etcd's request limit of 1.5 MiB (one event per transaction at
# worst) < the coordinator's 4 MiB receive limit < the clients' 64 MiB; log reads page by size
# under gRPC's 4 MiB, and states of any size go in 1 MiB pieces.
MAX_EVENT_BYTES = 1_000_000
# Real servers of one configuration, over all its virtual services: a ConfigApplied this large
# (about 45 bytes per IPv6 real server encoded) stays under MAX_EVENT_BYTES.
MAX_REAL_SERVERS = 20_000
MAX_ID_LEN = 128
MAX_TEXT = 4096
SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$")
_HASH_RE = re.compile(r"(?:[0-9a-f]{64})?")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


def is_node_name(text: str) -> bool:
    """A director's node name as the log records it (``origin``, a leader)."""
    return len(text) <= MAX_ID_LEN and bool(_NAME_RE.match(text))


def _need(cond: bool, field: str, expected: str, found: object) -> None:
    if not cond:
        raise InvalidEvent(f"{field}: expected {expected}, found {found!r}")


def validate_event(event: Event, *, max_bytes: int = MAX_EVENT_BYTES, size: int = 0) -> None:  # noqa: PLR0912, PLR0915 -- one check per payload
    """Raise :class:`InvalidEvent` if ``event`` must not be appended. ``size``: its encoded size."""
    # The checks that format their expectation run it only on failure (this is the append path).
    if size > max_bytes:
        _need(False, "event", f"at most {max_bytes} bytes encoded", f"{size} bytes")
    if not (0 < len(event.event_id) <= MAX_ID_LEN and _ID_RE.match(event.event_id)):
        _need(False, "event_id", f"1-{MAX_ID_LEN} characters of [A-Za-z0-9._:@/-]", event.event_id)
    _need(bool(_NAME_RE.match(event.cluster)), "cluster", "a name", event.cluster)
    _need(bool(_NAME_RE.match(event.origin)), "origin", "a node name", event.origin)
    _need(0 < len(event.actor) <= 256, "actor", "a daemon or operator name", event.actor)
    if len(event.reason) > MAX_TEXT:
        _need(False, "reason", f"at most {MAX_TEXT} characters", len(event.reason))
    _need(
        math.isfinite(event.wall_time) and event.wall_time > 0,
        "wall_time",
        "unix seconds",
        event.wall_time,
    )
    _need(event.term >= 0, "term", "a term >= 0", event.term)
    p = event.payload
    if isinstance(p, ConfigApplied):
        validate_config(p.config)
    elif isinstance(p, RealServerHealth):
        _service_key(p.virtual, "real_server_health.virtual")
        _endpoint(p.real, "real_server_health.real")
        _need(bool(_NAME_RE.match(p.observer)), "real_server_health.observer", "a node name", p.observer)
        _need(len(p.detail) <= MAX_TEXT, "real_server_health.detail", "a short text", len(p.detail))
        _need(
            math.isfinite(p.latency_ms) and p.latency_ms >= 0,
            "real_server_health.latency_ms",
            ">= 0",
            p.latency_ms,
        )
    elif isinstance(p, AdminOverride):
        _service_key(p.virtual, "admin_override.virtual")
        _endpoint(p.real, "admin_override.real")
        if p.action is AdminAction.WEIGHT:
            _need(0 <= p.weight <= 65535, "admin_override.weight", "0..65535", p.weight)
        _need(p.expires_at >= 0, "admin_override.expires_at", "unix seconds or 0", p.expires_at)
    elif isinstance(p, TableApplied):
        _need(bool(_NAME_RE.match(p.node)), "table_applied.node", "a node name", p.node)
        _need(bool(re.fullmatch(r"[0-9a-f]{64}", p.digest)), "table_applied.digest", "sha256 hex", p.digest)
    elif isinstance(p, Leadership):
        _need(bool(_NAME_RE.match(p.node)), "leadership.node", "a node name", p.node)
        _need(p.term > 0, "leadership.term", "a term > 0", p.term)
    elif isinstance(p, ConfigRejected):
        _need(bool(p.source), "config_rejected.source", "a file name", p.source)
        _need(
            0 < len(p.error) <= MAX_TEXT,
            "config_rejected.error",
            "the error, at most 4096 characters",
            p.error,
        )
    elif isinstance(p, DataplaneDrift):
        _need(bool(_NAME_RE.match(p.node)), "dataplane_drift.node", "a node name", p.node)
        _need(bool(p.repairs), "dataplane_drift.repairs", "at least one repair", "none")
        for i, line in enumerate(p.repairs):
            _need(0 < len(line) <= MAX_TEXT, f"dataplane_drift.repairs[{i}]", "an operation", line)
    elif isinstance(p, CommandRefused):
        _command_refused(p)
    elif isinstance(p, LogIntegrity):
        _need(bool(_NAME_RE.match(p.node)), "log_integrity.node", "a node name", p.node)
        _need(p.revision > 0, "log_integrity.revision", "a revision > 0", p.revision)
        for name, value in (("expected", p.expected), ("found", p.found)):
            _need(bool(_HASH_RE.fullmatch(value)), f"log_integrity.{name}", "sha256 hex or empty", value)
        _need(len(p.detail) <= MAX_TEXT, "log_integrity.detail", "a short text", len(p.detail))
    elif isinstance(p, CheckerHealth):
        _checker_health(p)
    elif isinstance(p, DrillMarker):
        _need(bool(p.drill_id), "drill_marker.drill_id", "an id", p.drill_id)
    elif isinstance(p, OverrideExpired):
        _service_key(p.virtual, "override_expired.virtual")
        _endpoint(p.real, "override_expired.real")
        rev = p.override_revision
        _need(rev > 0, "override_expired.override_revision", "a revision > 0", rev)


def _command_refused(p: CommandRefused) -> None:
    _need(bool(_NAME_RE.match(p.node)), "command_refused.node", "a node name", p.node)
    kinds = ("checkcommand", "fallbackcommand")
    _need(p.kind in kinds, "command_refused.kind", "checkcommand or fallbackcommand", p.kind)
    _need(0 < len(p.command) <= MAX_TEXT, "command_refused.command", "the command", p.command)
    _need(0 < len(p.reason) <= MAX_TEXT, "command_refused.reason", "the reason", p.reason)
    _need(len(p.virtuals) <= 100, "command_refused.virtuals", "at most 100", len(p.virtuals))
    for i, v in enumerate(p.virtuals):
        _need(0 < len(v) <= MAX_ID_LEN, f"command_refused.virtuals[{i}]", "a virtual service key", v)
    _need(p.config_revision > 0, "command_refused.config_revision", "a revision > 0", p.config_revision)


def _checker_health(p: CheckerHealth) -> None:
    _need(bool(_NAME_RE.match(p.node)), "checker_health.node", "a node name", p.node)
    _need(math.isfinite(p.stretch) and p.stretch >= 1.0, "checker_health.stretch", ">= 1", p.stretch)
    for name, value in (
        ("effective_interval", p.effective_interval),
        ("capacity", p.capacity),
        ("demand", p.demand),
    ):
        _need(math.isfinite(value) and value >= 0, f"checker_health.{name}", ">= 0", value)
    _need(p.inconclusive >= 0, "checker_health.inconclusive", ">= 0", p.inconclusive)
    _need(not p.behind or p.degraded, "checker_health.degraded", "true when behind", p.degraded)
    _need(len(p.detail) <= MAX_TEXT, "checker_health.detail", "a short text", len(p.detail))


def validate_config(cfg: Config) -> None:
    total = sum(len(v.reals) for v in cfg.virtuals)
    if total > MAX_REAL_SERVERS:
        _need(False, "config", f"at most {MAX_REAL_SERVERS} real servers over all virtual services", total)
    seen: set[str] = set()
    for i, v in enumerate(cfg.virtuals):
        path = f"config.virtuals[{i}]"
        _virtual(v, path)
        _need(v.key not in seen, path, "each virtual service once", v.key)
        seen.add(v.key)
    for name in ("fallback", "fallback6"):
        fb = getattr(cfg.globals, name)
        if fb is not None:
            _real(fb, f"config.globals.{name}")


def _virtual(v: VirtualService, path: str) -> None:
    if v.protocol is Protocol.FWM:
        _need(v.fwmark is not None and 0 < v.fwmark < 2**32, f"{path}.fwmark", "1..4294967295", v.fwmark)
    else:
        _ip(v.address, f"{path}.address", v.family)
        _need(0 < v.port < 65536, f"{path}.port", "1..65535", v.port)
    _need(
        v.scheduler in SCHEDULERS, f"{path}.scheduler", "one of " + ",".join(sorted(SCHEDULERS)), v.scheduler
    )
    if v.persistent is not None:
        _need(0 < v.persistent < 2**31, f"{path}.persistent", "seconds > 0", v.persistent)
    keys: set[str] = set()
    for j, r in enumerate(v.reals):
        _real(r, f"{path}.reals[{j}]")
        _need(r.key not in keys, f"{path}.reals[{j}]", "each real server once per virtual", r.key)
        keys.add(r.key)
    if v.fallback is not None:
        _real(v.fallback, f"{path}.fallback")


def _real(r: RealServer, path: str) -> None:
    _ip(r.address, f"{path}.address", None)
    _need(0 <= r.port < 65536, f"{path}.port", "0..65535", r.port)
    _need(0 <= r.weight <= 65535, f"{path}.weight", "0..65535", r.weight)
    _need(0 <= r.lower_threshold < 2**31, f"{path}.lower_threshold", ">= 0", r.lower_threshold)
    _need(0 <= r.upper_threshold < 2**31, f"{path}.upper_threshold", ">= 0", r.upper_threshold)


def _ip(addr: str | None, path: str, family: Family | None) -> None:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError as e:
        raise InvalidEvent(f"{path}: expected an IP address, found {addr!r}") from e
    _need(str(ip) == addr, path, f"the canonical form {ip}", addr)
    if family is not None:
        want = 4 if family is Family.INET else 6
        _need(ip.version == want, path, f"an IPv{want} address", addr)


@functools.lru_cache(maxsize=4096)  # pure; the same real servers come back in every event
def _endpoint(text: str, path: str) -> None:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
    _need(m is not None, path, "ip:port (IPv6 as [ip]:port)", text)
    assert m is not None
    _ip(m.group(1) or m.group(3), path, None)
    _need(0 <= int(m.group(2) or m.group(4)) < 65536, path, "a port 0..65535", text)


@functools.lru_cache(maxsize=4096)
def _service_key(text: str, path: str) -> None:
    m = re.fullmatch(r"(TCP|UDP) (.+)|FWM (\d+)( IPv6)?", text)
    _need(m is not None, path, '"TCP ip:port", "UDP ip:port" or "FWM mark"', text)
    assert m is not None
    if m.group(2):
        _endpoint(m.group(2), path)
