"""Closed config schemas from nested dataclasses: key lookup, did-you-mean, typed conversion."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from tune.config.errors import ConfigError

_NONE_TYPE = type(None)


def _hints(schema: type) -> dict[str, Any]:
    return {
        f.name: typing.get_type_hints(schema)[f.name] for f in dataclasses.fields(schema) if f.init
    }


def strip_optional(tp: Any) -> tuple[Any, bool]:
    """(``T``, True) for ``T | None``; (tp, False) otherwise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not _NONE_TYPE]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def type_name(tp: Any) -> str:
    """A short human-readable name of a type annotation."""
    inner, optional = strip_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        name = "one of " + ", ".join(repr(a) for a in typing.get_args(inner))
    elif origin in (list, tuple):
        name = f"a list of {type_name(typing.get_args(inner)[0])}"
    elif origin is dict:
        name = f"a mapping of str to {type_name(typing.get_args(inner)[1])}"
    elif dataclasses.is_dataclass(inner):
        name = f"a section ({getattr(inner, '__name__', inner)})"
    elif inner is Any:
        name = "any value"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def all_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key a schema accepts (sections and leaves)."""
    keys: list[str] = []
    for name, tp in _hints(schema).items():
        key = f"{prefix}{name}"
        keys.append(key)
        inner, _ = strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            keys.extend(all_keys(inner, key + "."))  # type: ignore[arg-type]
    return keys


def did_you_mean(key: str, schema: type, prefix: str = "") -> str:
    """`` (did you mean 'x.y'?)`` for an unknown dotted key of ``schema``, or an empty string.

    Args:
        key: the unknown key, relative to ``schema``.
        schema: the dataclass the key was looked up in.
        prefix: the dotted path of ``schema`` in the whole config, added to the suggestion.
    """
    parent, _, leaf = key.rpartition(".")
    candidates = all_keys(schema)
    siblings = {k.rpartition(".")[2]: k for k in candidates if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if not close:  # an abbreviation or an extension of a real name: tp -> tp_size, rank -> r
        close = [s for s in sorted(siblings) if s.startswith(leaf) or leaf.startswith(s)][:1]
    match = [siblings[close[0]]] if close else []
    if not match:
        # The right name in the wrong section: compare the last component against every key's.
        by_leaf = {k.rpartition(".")[2]: k for k in sorted(candidates, key=len, reverse=True)}
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        match = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f" (did you mean '{prefix}{match[0]}'?)" if match else ""


def type_at(schema: type, key: str) -> Any:
    """The annotation of a dotted key; raises KeyError for a key the schema does not accept.

    Keys below a ``dict[str, T]`` or ``Any`` field are open and take ``T`` (or Any).
    """
    tp: Any = schema
    for depth, part in enumerate(key.split(".")):
        inner, _ = strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            hints = _hints(inner)  # type: ignore[arg-type]
            if part not in hints:
                raise KeyError(".".join(key.split(".")[: depth + 1]))
            tp = hints[part]
        elif typing.get_origin(inner) is dict:
            tp = typing.get_args(inner)[1]
        elif inner is Any:
            return Any
        else:
            raise KeyError(".".join(key.split(".")[: depth + 1]))
    return tp


def find_unknown_keys(data: Mapping[str, Any], schema: type, prefix: str = "") -> list[str]:
    """Dotted keys in ``data`` that ``schema`` does not declare (closed schema)."""
    unknown: list[str] = []
    hints = _hints(schema)
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            unknown.append(key)
            continue
        inner, _ = strip_optional(hints[name])
        if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
            unknown.extend(find_unknown_keys(value, inner, key + "."))  # type: ignore[arg-type]
    return unknown


def convert(
    tp: Any, value: Any, key: str, source: str | None, lines: Mapping[str, int | str]
) -> Any:
    """Check ``value`` against the annotation ``tp`` and build it (dataclasses recursively).

    Raises:
        ConfigError: naming ``key`` and the expected type when the value does not fit.
    """

    inner, optional = strip_optional(tp)

    def fail(expected: str) -> ConfigError:
        expected += " or null" if optional and not expected.endswith(" or null") else ""
        return ConfigError(
            key, f"expected {expected}, got {value!r}", source, lines.get(key) or None
        )

    if value is None:
        if optional or inner is Any:
            return None
        raise fail(type_name(tp) + " (null is not allowed)")
    origin = typing.get_origin(inner)
    if inner is Any:
        return value
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, Mapping):
            raise fail(type_name(inner))
        return build(inner, value, source, lines, key + ".")  # type: ignore[arg-type]
    if origin is Literal:
        if value not in typing.get_args(inner) or isinstance(value, bool):
            raise fail(type_name(inner))
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise fail(type_name(inner))
        item_tp = typing.get_args(inner)[0]
        return [convert(item_tp, v, f"{key}.{i}", source, lines) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail(type_name(inner))
        item_tp = typing.get_args(inner)[1]
        return {str(k): convert(item_tp, v, f"{key}.{k}", source, lines) for k, v in value.items()}
    if origin in (Union, types.UnionType):
        for option in typing.get_args(inner):
            try:
                return convert(option, value, key, source, lines)
            except ConfigError:
                continue
        raise fail(type_name(inner))
    if inner is bool:
        if not isinstance(value, bool):
            raise fail("a boolean (true or false)")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r} in a config schema")


def build(
    schema: type,
    data: Mapping[str, Any],
    source: str | None = None,
    lines: Mapping[str, int | str] | None = None,
    prefix: str = "",
) -> Any:
    """An instance of the dataclass ``schema`` from a plain mapping, type-checked field by field.

    Args:
        schema: a dataclass; nested dataclass fields are sections.
        data: the resolved config (no unknown keys left: check with ``find_unknown_keys``).
        source: the file name for messages.
        lines: dotted key -> line number in ``source``.
        prefix: the dotted path of ``schema`` inside the whole config.
    """
    lines = lines or {}
    hints = _hints(schema)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        if f.name in data:
            kwargs[f.name] = convert(hints[f.name], data[f.name], key, source, lines)
            continue
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default:
            raise ConfigError(key, f"is required ({type_name(hints[f.name])}) but missing", source)
    unknown = [k for k in data if k not in hints]
    if unknown:
        full = f"{prefix}{unknown[0]}"
        hint = did_you_mean(unknown[0], schema, prefix)
        raise ConfigError(full, "unknown key" + hint, source, lines.get(full))
    return schema(**kwargs)


def to_container(config: Any) -> Any:
    """A plain dict/list tree of a config dataclass instance (for printing and saving)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_container(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_container(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [to_container(v) for v in config]
    return config
