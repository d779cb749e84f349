"""Subscribe filters: which events of the log a subscriber wants.

Within one dimension the values are alternatives (OR); across dimensions all must match (AND); an
empty dimension matches everything.

* ``types``: payload type names, ``RealServerHealth`` or the field name ``real_server_health``.
* ``nodes``: the origin node, or the node a payload is about (observer, TableApplied/Leadership
  node).
* ``virtuals``: a virtual service key (``TCP 203.0.113.10:80``, ``FWM 5``), or its ``ip:port`` or
  its bare IP. A ``ConfigApplied`` matches when its configuration has such a service.
* ``reals``: a real server ``ip:port`` or bare IP. A ``ConfigApplied`` matches when one of its
  services has such a real server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lvs_events import wire
from lvs_events.domain.events import PAYLOAD_TYPES
from lvs_events.domain.events import ConfigApplied as DomainConfigApplied
from lvs_events.errors import InvalidEvent
from lvs_events.pb.v1 import events_pb2 as pb

_TYPE_NAMES = {field: PAYLOAD_TYPES[tp] for tp, field in wire.PAYLOAD_FIELDS.items()}


def _endpoint_forms(text: str) -> set[str]:
    """``ip:port`` -> {``ip:port``, ``ip``}; IPv6 ``[ip]:port`` -> {``[ip]:port``, ``ip``}."""
    forms = {text}
    if text.startswith("["):
        forms.add(text[1:].split("]", 1)[0])
    elif ":" in text:
        forms.add(text.rsplit(":", 1)[0])
    return forms


def _virtual_forms(key: str) -> set[str]:
    forms = {key}
    proto, _, rest = key.partition(" ")
    if proto in ("TCP", "UDP") and rest:
        forms |= _endpoint_forms(rest)
    return forms


class EventFilter:
    def __init__(
        self,
        types: Sequence[str] = (),
        nodes: Sequence[str] = (),
        virtuals: Sequence[str] = (),
        reals: Sequence[str] = (),
    ) -> None:
        known = set(_TYPE_NAMES) | set(_TYPE_NAMES.values())
        unknown = [t for t in types if t not in known]
        if unknown:
            raise InvalidEvent(
                f"types: unknown payload type(s) {unknown}; known: {sorted(_TYPE_NAMES.values())}"
            )
        self.types = {_TYPE_NAMES.get(t, t) for t in types}
        self.nodes = set(nodes)
        self.virtuals = set(virtuals)
        self.reals = set(reals)
        self.everything = not (self.types or self.nodes or self.virtuals or self.reals)

    def __call__(self, event: pb.Event) -> bool:  # noqa: PLR0911 -- one early exit per dimension
        if self.everything:
            return True
        which = event.WhichOneof("payload")
        if which is None:
            return False
        if self.types and _TYPE_NAMES[which] not in self.types:
            return False
        payload = getattr(event, which)
        if self.nodes and not self._node_match(event, which, payload):
            return False
        if self.virtuals or self.reals:
            if which == "config_applied":
                return self._config_match(event)
            if which not in ("real_server_health", "admin_override"):
                return False
            if self.virtuals and not (_virtual_forms(payload.virtual) & self.virtuals):
                return False
            if self.reals and not (_endpoint_forms(payload.real) & self.reals):
                return False
        return True

    def _node_match(self, event: pb.Event, which: str, payload: object) -> bool:
        names = {event.origin}
        if which == "real_server_health":
            names.add(getattr(payload, "observer", ""))
        elif which in ("table_applied", "leadership"):
            names.add(getattr(payload, "node", ""))
        return bool(names & self.nodes)

    def _config_match(self, event: pb.Event) -> bool:
        try:
            domain = wire.event_from_pb(event).payload
        except InvalidEvent:
            return False
        if not isinstance(domain, DomainConfigApplied):
            return False
        for v in domain.config.virtuals:
            if self.virtuals and not (_virtual_forms(v.key) & self.virtuals):
                continue
            if not self.reals or _any(_endpoint_forms(r.key) & self.reals for r in v.reals):
                return True
        return False


def _any(sets: Iterable[set[str]]) -> bool:
    return any(bool(s) for s in sets)
