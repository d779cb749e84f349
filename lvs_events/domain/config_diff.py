"""What changes between two configurations, per global setting, virtual service and real server.

Pure. Used by ``lvs-events config diff`` (the file against the config in force) and by the
agent's autoreload to say what a reload changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lvs_events.domain.config import Config, GlobalSettings, RealServer, VirtualService


@dataclasses.dataclass(frozen=True, slots=True)
class Removal:
    """How much of a configuration another one removes (the blast radius of applying it)."""

    virtuals_before: int
    virtuals_removed: int
    reals_before: int
    reals_removed: int

    def exceeds(self, share: float) -> bool:
        """Removes every virtual service or real server there was, or more than ``share``
        (0..1) of either."""
        for before, removed in (
            (self.virtuals_before, self.virtuals_removed),
            (self.reals_before, self.reals_removed),
        ):
            if before and (removed == before or removed / before > share):
                return True
        return False

    def describe(self) -> str:
        return (
            f"removes {self.virtuals_removed} of {self.virtuals_before} virtual services and "
            f"{self.reals_removed} of {self.reals_before} real servers"
        )


def removal(old: Config | None, new: Config) -> Removal:
    """What applying ``new`` removes from ``old`` (a real server counts per virtual service)."""
    if old is None:
        return Removal(0, 0, 0, 0)
    kept = {(v.key, r.key) for v in new.virtuals for r in v.reals}
    keys = {v.key for v in new.virtuals}
    pairs = [(v.key, r.key) for v in old.virtuals for r in v.reals]
    return Removal(
        len(old.virtuals),
        sum(1 for v in old.virtuals if v.key not in keys),
        len(pairs),
        sum(1 for p in pairs if p not in kept),
    )


def _fields_changed(old: Any, new: Any, skip: frozenset[str] = frozenset()) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(old):
        if f.name in skip:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and not isinstance(a, RealServer):
            out += [f"{f.name}.{c}" for c in _fields_changed(a, b)]
        else:
            out.append(f"{f.name} {_show(a)} -> {_show(b)}")
    return out


def _show(v: object) -> str:
    if v is None:
        return "(unset)"
    if isinstance(v, RealServer):
        return f"{v.key} {v.forwarding.value} {v.weight}"
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) or "(none)"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def _real_line(r: RealServer) -> str:
    extra = ""
    if r.lower_threshold or r.upper_threshold:
        extra = f" l:{r.lower_threshold} u:{r.upper_threshold}"
    return f"{r.key} {r.forwarding.value} {r.weight}{extra}"


def diff_configs(old: Config | None, new: Config) -> list[str]:
    """Lines: ``+`` added, ``-`` removed, ``~`` changed; real servers indented under their service.

    An empty list means the two configurations are the same (the source name is ignored).
    """
    old = old or Config(globals=GlobalSettings())
    lines = [f"~ global {c}" for c in _fields_changed(old.globals, new.globals)]
    before = {v.key: v for v in old.virtuals}
    after = {v.key: v for v in new.virtuals}
    for key, v in after.items():
        prev = before.get(key)
        if prev is None:
            lines.append(f"+ virtual {key} ({v.scheduler}, {len(v.reals)} real servers)")
            lines += [f"  + real {_real_line(r)}" for r in v.reals]
            continue
        lines += _virtual_changes(prev, v)
    for key, v in before.items():
        if key not in after:
            lines.append(f"- virtual {key} ({len(v.reals)} real servers)")
    return lines


def _virtual_changes(old: VirtualService, new: VirtualService) -> list[str]:
    head = [f"~ virtual {new.key}: {c}" for c in _fields_changed(old, new, frozenset({"reals"}))]
    reals: list[str] = []
    before = {r.key: r for r in old.reals}
    after = {r.key: r for r in new.reals}
    for key, r in after.items():
        prev = before.get(key)
        if prev is None:
            reals.append(f"  + real {_real_line(r)}")
        elif prev != r:
            reals += [f"  ~ real {key}: {c}" for c in _fields_changed(prev, r)]
    reals += [f"  - real {_real_line(r)}" for key, r in before.items() if key not in after]
    if reals and not head:
        head = [f"~ virtual {new.key}"]
    return head + reals
