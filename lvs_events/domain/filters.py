"""Which events of the log a reader wants: the one matching rule, on domain events.

The coordinator applies it to every ``Subscribe`` (so ``lvs-events tail --vip X`` receives only
the matching events over the wire), and anything else that filters events uses the same value.

The rule:

* an empty dimension matches every event; within a dimension the values are alternatives (OR);
  across dimensions every non-empty one must match (AND);
* ``types``: payload type names, ``RealServerHealth`` or its field name ``real_server_health``;
  an unknown name is refused (:class:`InvalidFilter`, listing the known ones);
* ``nodes``: the event's origin, or the node its payload is about (``RealServerHealth.observer``,
  ``TableApplied.node``, ``Leadership.node``, ``DataplaneDrift.node``);
* ``virtuals``: a virtual service key (``TCP 203.0.113.10:80``, ``FWM 5``), its ``ip:port``
  (``[2001:db8::10]:80`` for IPv6) or its bare IP; FWM services by their key only;
* ``reals``: a real server ``ip:port`` (``[ip]:port`` for IPv6) or its bare IP;
* ``RealServerHealth`` and ``AdminOverride`` name one virtual service and one real server and
  are matched on those; a ``ConfigApplied`` matches when its configuration defines a virtual
  service matching ``virtuals`` that has a real server matching ``reals`` (so following a VIP
  shows the configurations that define it); no other payload names a service or a real
  server, so none matches a ``virtuals`` or ``reals`` filter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from lvs_events.domain.config import VirtualService
from lvs_events.domain.events import (
    PAYLOAD_TYPES,
    AdminOverride,
    ConfigApplied,
    DataplaneDrift,
    Event,
    Leadership,
    RealServerHealth,
    TableApplied,
)
from lvs_events.errors import LvsEventsError

__all__ = ["TYPE_NAMES", "EventFilter", "InvalidFilter", "endpoint_forms", "virtual_forms"]


class InvalidFilter(LvsEventsError):
    """A filter naming something that cannot exist (an unknown event type)."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# every accepted spelling of a payload type -> its type name (``Event.type_name``)
TYPE_NAMES: Final[dict[str, str]] = {
    **{name: name for name in PAYLOAD_TYPES.values()},
    **{_snake(name): name for name in PAYLOAD_TYPES.values()},
}


def endpoint_forms(text: str) -> frozenset[str]:
    """The spellings an ``ip:port`` endpoint matches: itself and its bare IP
    (``[2001:db8::21]:80`` -> itself and ``2001:db8::21``)."""
    if text.startswith("["):
        return frozenset({text, text[1:].split("]", 1)[0]})
    if ":" in text:
        return frozenset({text, text.rsplit(":", 1)[0]})
    return frozenset({text})


def virtual_forms(key: str) -> frozenset[str]:
    """The spellings a virtual service key matches: the key, and for TCP/UDP its endpoint's forms."""
    proto, _, rest = key.partition(" ")
    if proto in ("TCP", "UDP") and rest:
        return frozenset({key}) | endpoint_forms(rest)
    return frozenset({key})


def _type_names(types: Iterable[str]) -> frozenset[str]:
    names = list(types)
    unknown = sorted({t for t in names if t not in TYPE_NAMES})
    if unknown:
        known = ", ".join(sorted(PAYLOAD_TYPES.values()))
        raise InvalidFilter(f"unknown event type(s) {', '.join(unknown)}; known types: {known}")
    return frozenset(TYPE_NAMES[t] for t in names)


class EventFilter:
    """An immutable event filter (see the module docstring for the rule). ``EventFilter()``
    matches everything; call it on an :class:`Event` (``wanted(event)``)."""

    __slots__ = ("nodes", "reals", "types", "virtuals")

    types: frozenset[str]  # type names (``Event.type_name``), spellings normalised
    nodes: frozenset[str]
    virtuals: frozenset[str]
    reals: frozenset[str]

    def __init__(
        self,
        *,
        types: Iterable[str] = (),
        nodes: Iterable[str] = (),
        virtuals: Iterable[str] = (),
        reals: Iterable[str] = (),
    ) -> None:
        object.__setattr__(self, "types", _type_names(types))
        object.__setattr__(self, "nodes", frozenset(nodes))
        object.__setattr__(self, "virtuals", frozenset(virtuals))
        object.__setattr__(self, "reals", frozenset(reals))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"EventFilter is immutable (tried to set {name})")

    def _key(self) -> tuple[frozenset[str], ...]:
        return (self.types, self.nodes, self.virtuals, self.reals)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventFilter) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [
            f"{name}={sorted(values)!r}"
            for name, values in zip(("types", "nodes", "virtuals", "reals"), self._key(), strict=True)
            if values
        ]
        return f"EventFilter({', '.join(parts)})"

    @property
    def everything(self) -> bool:
        """No dimension set: every event matches."""
        return not (self.types or self.nodes or self.virtuals or self.reals)

    def wants_type(self, type_name: str) -> bool:
        """The ``types`` dimension alone (a reader may check it before decoding an event)."""
        return not self.types or type_name in self.types

    def __call__(self, event: Event) -> bool:
        if not self.wants_type(event.type_name):
            return False
        if self.nodes and not (_nodes_of(event) & self.nodes):
            return False
        if not (self.virtuals or self.reals):
            return True
        p = event.payload
        if isinstance(p, ConfigApplied):
            return any(self._defines(v) for v in p.config.virtuals)
        if isinstance(p, (RealServerHealth, AdminOverride)):
            return self._virtual(p.virtual) and self._real(p.real)
        return False

    def _virtual(self, key: str) -> bool:
        return not self.virtuals or not self.virtuals.isdisjoint(virtual_forms(key))

    def _real(self, key: str) -> bool:
        return not self.reals or not self.reals.isdisjoint(endpoint_forms(key))

    def _defines(self, v: VirtualService) -> bool:
        if not self._virtual(v.key):
            return False
        return not self.reals or any(self._real(r.key) for r in v.reals)


def _nodes_of(event: Event) -> frozenset[str]:
    p = event.payload
    if isinstance(p, RealServerHealth):
        return frozenset({event.origin, p.observer})
    if isinstance(p, (TableApplied, Leadership, DataplaneDrift)):
        return frozenset({event.origin, p.node})
    return frozenset({event.origin})
