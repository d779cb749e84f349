"""The edge between the domain and the protobuf wire format.

Generated code lives in ``lvs_events.pb`` and is used only here, in the gRPC servers and in the
clients; the domain never sees a protobuf message. Conversion is driven by field names: every
domain dataclass field has a protobuf field of the same name (a unit test keeps them in step).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, get_args, get_origin

from google.protobuf.message import DecodeError, Message

from lvs_events.domain import chain
from lvs_events.domain import config as dc
from lvs_events.domain import events as de
from lvs_events.errors import InvalidEvent
from lvs_events.pb.v1 import events_pb2 as pb

# domain payload type <-> name of the oneof field in pb.Event
PAYLOAD_FIELDS: dict[type[Any], str] = {
    de.ConfigApplied: "config_applied",
    de.RealServerHealth: "real_server_health",
    de.AdminOverride: "admin_override",
    de.TableApplied: "table_applied",
    de.Leadership: "leadership",
    de.DrillMarker: "drill_marker",
    de.ConfigRejected: "config_rejected",
    de.DataplaneDrift: "dataplane_drift",
    de.CommandRefused: "command_refused",
    de.LogIntegrity: "log_integrity",
    de.CheckerHealth: "checker_health",
    de.OverrideExpired: "override_expired",
}
FIELD_PAYLOADS = {v: k for k, v in PAYLOAD_FIELDS.items()}

# domain enum -> (protobuf enum prefix)
_ENUM_PREFIX: dict[type[enum.Enum], str] = {
    dc.Forwarding: "FORWARDING_",
    dc.Protocol: "PROTOCOL_",
    de.AdminAction: "ACTION_",
    de.LeadershipChange: "CHANGE_",
}


def _enum_to_pb(value: enum.Enum) -> int:
    if isinstance(value, dc.Family):
        return int(value)
    name = _ENUM_PREFIX[type(value)] + str(value.value).upper()
    return _ENUM_VALUES[name]


def _enum_from_pb(tp: type[enum.Enum], number: int, path: str) -> enum.Enum:
    if tp is dc.Family:
        try:
            return dc.Family(number)
        except ValueError as e:
            raise InvalidEvent(f"{path}: address family {number} is neither 2 (inet) nor 10 (inet6)") from e
    prefix = _ENUM_PREFIX[tp]
    for name, num in _ENUM_VALUES.items():
        if num == number and name.startswith(prefix):
            try:
                return tp(name[len(prefix) :].lower())
            except ValueError:
                break
    raise InvalidEvent(f"{path}: {number} is not a valid {tp.__name__}")


def _collect_enum_values() -> dict[str, int]:
    out: dict[str, int] = {}
    for enum_desc in pb.DESCRIPTOR.enum_types_by_name.values():
        out.update({v.name: v.number for v in enum_desc.values})
    for msg in pb.DESCRIPTOR.message_types_by_name.values():
        for enum_desc in msg.enum_types:
            out.update({v.name: v.number for v in enum_desc.values})
    return out


_ENUM_VALUES = _collect_enum_values()


def to_pb(value: Any, msg: Message) -> Message:
    """Fill ``msg`` from a domain dataclass, field by field."""
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if v is None:
            continue
        if dataclasses.is_dataclass(v):
            to_pb(v, getattr(msg, f.name))
        elif isinstance(v, tuple):
            target = getattr(msg, f.name)
            for item in v:
                if dataclasses.is_dataclass(item):
                    to_pb(item, target.add())
                else:
                    target.append(item)
        elif isinstance(v, enum.Enum):
            setattr(msg, f.name, _enum_to_pb(v))
        else:
            setattr(msg, f.name, v)
    return msg


def from_pb(tp: type[Any], msg: Message, path: str) -> Any:
    """Build a domain dataclass of type ``tp`` from ``msg``; raises InvalidEvent on a bad value."""
    kwargs: dict[str, Any] = {}
    for name, optional, kind, inner in _plan(tp):
        if optional and not _has(msg, name):
            kwargs[name] = None
            continue
        raw = getattr(msg, name)
        if kind == _SCALAR:
            kwargs[name] = raw
        elif kind == _TUPLE_OF_DATACLASS:
            fpath = f"{path}.{name}"
            kwargs[name] = tuple(from_pb(inner, m, f"{fpath}[{i}]") for i, m in enumerate(raw))
        elif kind == _TUPLE:
            kwargs[name] = tuple(raw)
        elif kind == _DATACLASS:
            kwargs[name] = from_pb(inner, raw, f"{path}.{name}")
        else:
            kwargs[name] = _enum_from_pb(inner, raw, f"{path}.{name}")
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidEvent(f"{path}: {e}") from e


_SCALAR, _TUPLE, _TUPLE_OF_DATACLASS, _DATACLASS, _ENUM = range(5)
_PLANS: dict[type[Any], list[tuple[str, bool, int, Any]]] = {}


def _plan(tp: type[Any]) -> list[tuple[str, bool, int, Any]]:
    """Per dataclass, once: (field, optional, kind, inner type). Type-hint analysis dominated the
    cost of a conversion when done per call."""
    plan = _PLANS.get(tp)
    if plan is not None:
        return plan
    hints = typing.get_type_hints(tp)
    plan = []
    for f in dataclasses.fields(tp):
        hint = hints[f.name]
        inner = _strip_optional(hint)
        if get_origin(inner) is tuple:
            (item_tp, _ellipsis) = get_args(inner)
            if isinstance(item_tp, type) and dataclasses.is_dataclass(item_tp):
                plan.append((f.name, _is_optional(hint), _TUPLE_OF_DATACLASS, item_tp))
            else:
                plan.append((f.name, _is_optional(hint), _TUPLE, None))
        elif isinstance(inner, type) and dataclasses.is_dataclass(inner):
            plan.append((f.name, _is_optional(hint), _DATACLASS, inner))
        elif isinstance(inner, type) and issubclass(inner, enum.Enum):
            plan.append((f.name, _is_optional(hint), _ENUM, inner))
        else:
            plan.append((f.name, _is_optional(hint), _SCALAR, None))
    _PLANS[tp] = plan
    return plan


def _has(msg: Message, name: str) -> bool:
    try:
        return msg.HasField(name)
    except ValueError:  # a proto3 scalar without presence: present when non-default
        return bool(getattr(msg, name))


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint)


def _strip_optional(hint: Any) -> Any:
    if _is_optional(hint):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0]
    return hint


# --- events -----------------------------------------------------------------------------------


def event_to_pb(event: de.Event) -> pb.Event:
    msg = pb.Event(
        event_id=event.event_id,
        cluster=event.cluster,
        origin=event.origin,
        actor=event.actor,
        reason=event.reason,
        wall_time=event.wall_time,
        term=event.term,
        revision=event.revision,
    )
    to_pb(event.payload, getattr(msg, PAYLOAD_FIELDS[type(event.payload)]))
    return msg


def event_from_pb(msg: pb.Event) -> de.Event:
    which = msg.WhichOneof("payload")
    if which is None:
        raise InvalidEvent("event has no payload")
    payload = from_pb(FIELD_PAYLOADS[which], getattr(msg, which), which)
    return de.Event(
        event_id=msg.event_id,
        cluster=msg.cluster,
        origin=msg.origin,
        actor=msg.actor,
        reason=msg.reason,
        wall_time=msg.wall_time,
        payload=payload,
        term=msg.term,
        revision=msg.revision,
    )


def event_to_bytes(event: de.Event) -> bytes:
    return event_to_pb(event).SerializeToString(deterministic=True)


def event_from_bytes(blob: bytes) -> de.Event:
    msg = pb.Event()
    try:
        msg.ParseFromString(blob)
    except DecodeError as e:
        raise InvalidEvent(f"undecodable event: {e}") from e
    return event_from_pb(msg)


# --- the hash chain (lvs_events.domain.chain) --------------------------------------------------
# prev_hash = 40 and hash = 41, bytes (wire type 2): the highest field numbers of Event, so the
# serialized event is its body followed by these two fields, as protobuf orders fields by number.
_PREV_TAG = b"\xc2\x02"
_HASH_TAG = b"\xca\x02"
_HASH_LEN = bytes([chain.HASH_BYTES])


def seal(msg: pb.Event, prev: bytes) -> tuple[bytes, bytes]:
    """Chain ``msg`` (its ``revision`` set, its chain fields unset) behind ``prev``: sets its
    ``prev_hash`` and ``hash``; returns (the bytes to store, its hash). One serialization."""
    if msg.hash:  # sealed by an earlier attempt at another place in the log
        msg.ClearField("prev_hash")
        msg.ClearField("hash")
    body = msg.SerializeToString(deterministic=True)
    digest = chain.link_hash(prev, body)
    msg.prev_hash = prev
    msg.hash = digest
    if prev:
        return b"".join((body, _PREV_TAG, _HASH_LEN, prev, _HASH_TAG, _HASH_LEN, digest)), digest
    return b"".join((body, _HASH_TAG, _HASH_LEN, digest)), digest


def chain_link(msg: pb.Event) -> chain.Link:
    """``msg`` as the chain sees it: the body is the event with its chain fields unset."""
    body = pb.Event()
    body.CopyFrom(msg)
    body.ClearField("prev_hash")
    body.ClearField("hash")
    return chain.Link(msg.revision, body.SerializeToString(deterministic=True), msg.prev_hash, msg.hash)
