"""Canonical JSON for domain values (snapshots, ``GetState``, ``-o json``). Pure.

``encode`` turns dataclasses, enums, tuples and persistent maps into JSON-able data with a
stable key order; ``decode(T, data)`` rebuilds a value of type ``T`` from it, driven by the
type hints, and raises ``ValueError`` naming the path of the first field that does not fit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin

from immutables import Map

T = TypeVar("T")


def encode(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, (Map, dict)):
        items = [(_key_text(k), encode(v)) for k, v in value.items()]
        return [[k, v] for k, v in sorted(items, key=lambda kv: kv[0])]
    return value


def _key_text(key: object) -> Any:
    if isinstance(key, tuple):
        return [encode(k) for k in key]
    return encode(key)


def dumps(value: object) -> bytes:
    return json.dumps(encode(value), sort_keys=True, separators=(",", ":")).encode()


def loads(cls: type[T], blob: bytes) -> T:
    value: T = decode(cls, json.loads(blob))
    return value


def decode(tp: Any, data: Any, path: str = "$") -> Any:
    """Rebuild a value of type ``tp`` from JSON data; ValueError names the first path that does not fit."""
    return _decoder(tp)(data, path)


Decoder = Callable[[Any, str], Any]


@functools.cache
def _decoder(tp: Any) -> Decoder:  # noqa: PLR0911 -- one branch per kind of type
    """A decoder specialised for ``tp``, built once per type (snapshots decode 10^5 fields)."""
    origin = get_origin(tp)
    if tp is Any:
        return lambda data, path: data
    if origin in (typing.Union, types.UnionType):
        return _union_decoder(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_decoder(tp)
    if origin is tuple:
        return _tuple_decoder(tp)
    if origin in (Map, dict):
        return _map_decoder(tp, origin)
    if tp in (int, str, bool):
        return _scalar_decoder(tp)
    if tp is float:

        def dec_float(data: Any, path: str) -> Any:
            if isinstance(data, bool) or not isinstance(data, (int, float)):
                raise ValueError(f"{path}: expected a number")  # noqa: TRY004 -- ValueError is the contract
            return float(data)

        return dec_float

    def dec_unknown(data: Any, path: str) -> Any:
        raise ValueError(f"{path}: cannot decode type {tp}")

    return dec_unknown


def _union_decoder(tp: Any) -> Decoder:
    args = get_args(tp)
    allow_none = type(None) in args
    alts = [a for a in args if a is not type(None)]

    def dec(data: Any, path: str) -> Any:
        if data is None and allow_none:
            return None
        errors: list[str] = []
        for a in alts:
            try:
                return _decoder(a)(data, path)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{path}: no alternative of {tp} fits: {'; '.join(errors)}")

    return dec


def _dataclass_decoder(tp: Any) -> Decoder:
    plan: list[tuple[str, Decoder]] = []

    def dec(data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object for {tp.__name__}")  # noqa: TRY004 -- ValueError is the contract
        if not plan:  # resolved on first use: field types may refer to types defined later
            plan.extend((name, _decoder(hint)) for name, hint in _fields(tp))
        kwargs = {}
        for name, field_decoder in plan:
            if name in data:
                kwargs[name] = field_decoder(data[name], f"{path}.{name}")
        return tp(**kwargs)

    return dec


def _enum_decoder(tp: type[enum.Enum]) -> Decoder:
    def dec(data: Any, path: str) -> Any:
        try:
            return tp(data)
        except ValueError as e:
            raise ValueError(f"{path}: {data!r} is not a {tp.__name__}") from e

    return dec


def _tuple_decoder(tp: Any) -> Decoder:
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        item = args[0]

        def dec_var(data: Any, path: str) -> Any:
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a list")  # noqa: TRY004 -- ValueError is the contract
            d = _decoder(item)
            return tuple(d(v, f"{path}[{i}]") for i, v in enumerate(data))

        return dec_var

    def dec_fixed(data: Any, path: str) -> Any:
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list")  # noqa: TRY004 -- ValueError is the contract
        if len(args) != len(data):
            raise ValueError(f"{path}: expected {len(args)} items")
        return tuple(_decoder(a)(v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))

    return dec_fixed


def _map_decoder(tp: Any, origin: Any) -> Decoder:
    kt, vt = get_args(tp)

    def dec(data: Any, path: str) -> Any:
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of [key, value] pairs")  # noqa: TRY004 -- ValueError is the contract
        kd, vd = _decoder(kt), _decoder(vt)
        pairs = {kd(k, f"{path}.key"): vd(v, f"{path}[{k!r}]") for k, v in data}
        return Map(pairs) if origin is Map else pairs

    return dec


def _scalar_decoder(tp: type[Any]) -> Decoder:
    def dec(data: Any, path: str) -> Any:
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise ValueError(f"{path}: expected {tp.__name__}, found {data!r}")
        return data

    return dec


@functools.cache
def _fields(tp: Any) -> tuple[tuple[str, Any], ...]:
    """(name, resolved type hint) of a dataclass's fields; resolving hints is slow, so once per type."""
    hints = typing.get_type_hints(tp)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(tp))
