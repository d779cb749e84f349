"""Canonical JSON for domain values (snapshots, ``GetState``, ``-o json``). Pure.

``encode`` turns dataclasses, enums, tuples and persistent maps into JSON-able data with a
stable key order; ``decode(T, data)`` rebuilds a value of type ``T`` from it, driven by the
type hints, and raises ``ValueError`` naming the path of the first field that does not fit.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
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


def decode(tp: Any, data: Any, path: str = "$") -> Any:  # noqa: PLR0911, PLR0912 -- one branch per kind of type
    origin = get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if data is None and type(None) in args:
            return None
        errors: list[str] = []
        for a in args:
            if a is type(None):
                continue
            try:
                return decode(a, data, path)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{path}: no alternative of {tp} fits: {'; '.join(errors)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object for {tp.__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = decode(hints[f.name], data[f.name], f"{path}.{f.name}")
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError as e:
            raise ValueError(f"{path}: {data!r} is not a {tp.__name__}") from e
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise ValueError(f"{path}: expected {len(args)} items")
        return tuple(decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
    if origin in (Map, dict):
        kt, vt = get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of [key, value] pairs")
        pairs = {decode(kt, k, f"{path}.key"): decode(vt, v, f"{path}[{k!r}]") for k, v in data}
        return Map(pairs) if origin is Map else pairs
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ValueError(f"{path}: expected a number")
        return float(data)
    if tp in (int, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise ValueError(f"{path}: expected {tp.__name__}, found {data!r}")
        return data
    raise ValueError(f"{path}: cannot decode type {tp}")
