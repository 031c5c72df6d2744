"""Typed dataclass configs from YAML/JSON dicts and `a.b.c=value` overrides.

Unknown keys and wrong types fail with one line naming the key; nothing is coerced silently
beyond int → float and numeric strings for numeric fields. A `Literal[...]` field takes one of
its values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key that does not exist, or a value of the wrong type."""


def _union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")


def _sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    inner = args[0] if args else Any
    return origin(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))


def _literal(value: Any, tp: Any, key: str) -> Any:
    if value in typing.get_args(tp):
        return value
    raise ConfigError(f"{key} must be one of {typing.get_args(tp)}, got {value!r}")


def _float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return _fail(key, "a number", value)


def _fail(key: str, what: str, value: Any) -> Any:
    raise ConfigError(f"{key}: expected {what}, got {value!r}")


def _exact(value: Any, key: str, types_: tuple[type, ...], what: str) -> Any:
    """`value` itself when it is one of `types_` (bool is never an int here)."""
    if isinstance(value, types_) and not (isinstance(value, bool) and bool not in types_):
        return value
    return _fail(key, what, value)


_SCALARS = {
    bool: lambda v, k: _exact(v, k, (bool,), "true/false"),
    int: lambda v, k: _exact(v, k, (int,), "an integer"),
    str: lambda v, k: _exact(v, k, (str,), "a string"),
    float: _float,
    dict: lambda v, k: _exact(v, k, (dict,), "a mapping"),
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as config type `tp`, or a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(value, tp, key)
    if origin is typing.Literal:
        return _literal(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (tuple, list):
        return _sequence(value, tp, key)
    if tp is Any:
        return value
    scalar = _SCALARS.get(dict if origin is dict else tp)
    if scalar is None:
        raise ConfigError(f"{key}: unsupported config type {tp!r}")
    return scalar(value, key)


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) onto a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | None, overrides: list[str] = ()) -> T:
    data: dict = {}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    return from_dict(cls, apply_overrides(data, list(overrides)))


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
