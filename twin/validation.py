"""Turn parsed TOML into frozen dataclasses, refusing anything doubtful.

A scenario is data, validated once at load (see DESIGN.md). Every dataclass field may carry
``metadata`` with an allowed range (``range=(lo, hi)``), a set of allowed strings (``choices``) or
``shares=True`` for a ``dict[str, float]`` whose values must sum to 1. :func:`build` walks the
dataclass tree, and every error names the full dotted field path, the value found and what would be
right. Unknown keys are errors (a typo never silently falls back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

SHARE_SUM_TOLERANCE = 1e-6


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the field and what is allowed."""


def field(*, lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] | None = None,
          shares: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with validation metadata."""
    meta = {"range": (lo, hi), "choices": choices, "shares": shares}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, list | dict | tuple):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _describe_range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}"


def _check_number(path: str, value: Any, want: type, meta: dict) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or isinstance(value, bool):
        raise ScenarioError(f"{path}: expected {want.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ScenarioError(f"{path}: NaN is not allowed")
    lo, hi = meta.get("range", (None, None)) if meta else (None, None)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ScenarioError(f"{path}: {value!r} is out of range; allowed {_describe_range(lo, hi)}")
    return value


def _convert(path: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(path, value, args[0], meta)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ScenarioError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        return _check_number(path, value, tp, meta)
    if tp is str:
        if not isinstance(value, str):
            raise ScenarioError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        choices = meta.get("choices") if meta else None
        if choices and value not in choices:
            raise ScenarioError(f"{path}: {value!r} is not allowed; choose one of {', '.join(choices)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ScenarioError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(f"{path}[{i}]", v, item_tp, meta) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ScenarioError(f"{path}: expected a table, got {type(value).__name__} {value!r}")
        _key_tp, val_tp = typing.get_args(tp)
        choices = meta.get("choices") if meta else None
        out = {}
        for k, v in value.items():
            if choices and k not in choices:
                raise ScenarioError(f"{path}: unknown key {k!r}; allowed keys are {', '.join(choices)}")
            out[k] = _convert(f"{path}.{k}", v, val_tp, {"range": meta.get("range", (None, None))} if meta else {})
        if meta and meta.get("shares"):
            total = sum(out.values())
            if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
                raise ScenarioError(f"{path}: shares must sum to 1, they sum to {total:.6g} ({out})")
        return types.MappingProxyType(out)
    raise TypeError(f"{path}: unsupported field type {tp!r}")  # a programming error, not a user error


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a TOML table, validating every field."""
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a table, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ScenarioError(f"{sub}: missing required value")
            continue
        kwargs[name] = _convert(sub, data[name], hints[name], dict(f.metadata))
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ScenarioError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    return obj


def to_plain(obj: Any) -> Any:
    """The inverse of :func:`build`: dataclasses → plain dicts/lists, for writing the resolved scenario."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict | types.MappingProxyType):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    return obj


def merge(tp: Any, base: Any, override: Any) -> Any:
    """Lay ``override`` over ``base`` following the schema ``tp``.

    Tables that are dataclasses merge key by key, as do named collections of them
    (``[diseases.copd]``); a mapping of plain values — a share table such as ``mix`` — is replaced
    whole, because half of one share table merged into another would no longer sum to 1. Lists and
    values replace."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(hints[key], base[key], value) if key in hints and key in base else value
        return out
    if typing.get_origin(tp) is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not (dataclasses.is_dataclass(val_tp) or typing.get_origin(val_tp) is dict):
            return override  # a share table or other leaf mapping: replaced whole
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(val_tp, base[key], value) if key in base else value
        return out
    return override
