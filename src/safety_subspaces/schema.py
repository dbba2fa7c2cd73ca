"""Build typed dataclasses from plain values (YAML mappings, KEY=VALUE pairs), with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, Mapping, Union

from .errors import UserError


def _describe(kind: Any) -> str:
    """A short human name of a type annotation."""
    origin = typing.get_origin(kind)
    if origin is Annotated:
        return _describe(typing.get_args(kind)[0])
    if origin is Literal:
        return " | ".join(repr(v) for v in typing.get_args(kind))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(kind)[0])}"
    if origin in (dict, Mapping):
        return f"a mapping of {_describe(typing.get_args(kind)[1])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(kind) if a is not type(None))
    if dataclasses.is_dataclass(kind):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(kind))
    return getattr(kind, "__name__", str(kind))


describe = _describe


def convert(value: Any, kind: Any, where: str) -> Any:
    """Check and convert one value against a type annotation; raise UserError naming `where`.

    `Annotated[T, checker]` hands the value to `checker.convert(value, where)` (registries check names this way).
    """
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin is Annotated:
        checker = next((meta for meta in args[1:] if hasattr(meta, "convert")), None)
        return checker.convert(value, where) if checker is not None else convert(value, args[0], where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(value, options[0], where)
        for option in options:
            try:
                return convert(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {_describe(kind)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not allowed; use one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected {_describe(kind)}, got {value!r}")
        return [convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected {_describe(kind)}, got {value!r}")
        return {str(k): convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {kind!r}")


def admits_text(kind: Any) -> bool:
    """Whether an annotation takes a plain string as it is (str, an optional str, a Literal of strings)."""
    origin = typing.get_origin(kind)
    if kind is str:
        return True
    if origin is Annotated:
        return admits_text(typing.get_args(kind)[0])
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(kind))
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return len(options) == 1 and admits_text(options[0])
    return False


def is_list(kind: Any) -> bool:
    """Whether an annotation is a list (or an optional list)."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        return True
    if origin in (Union, types.UnionType, Annotated):
        return any(is_list(a) for a in typing.get_args(kind) if a is not type(None))
    return False


def build(cls: type, data: Any, where: str) -> Any:
    """Instantiate a dataclass from a mapping; unknown keys and missing required keys are UserErrors.

    A dataclass may define `coerce(data, where)` to rewrite its input first (a bare string, an older key).
    """
    coerce = getattr(cls, "coerce", None)
    if coerce is not None:
        data = coerce(data, where)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected {_describe(cls)}, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in known]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(known)}")
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = convert(data[name], hints[name], f"{where}.{name}" if where else name)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise UserError(f"{where or 'config'}: missing required key {name!r}")
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        check(where)
    return instance


def as_plain(instance: Any) -> Any:
    """A dataclass tree as plain dicts and lists (for config.yaml and job specs); `as_plain()` methods are used."""
    own = getattr(instance, "as_plain", None)
    if own is not None and not isinstance(instance, type):
        return own()
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: as_plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)}
    if isinstance(instance, Mapping):
        return {k: as_plain(v) for k, v in instance.items()}
    if isinstance(instance, (list, tuple)):
        return [as_plain(v) for v in instance]
    return instance
