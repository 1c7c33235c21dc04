"""Dotted imports named in configs, refused unless an explicit allow-list covers them."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from tune.recipes.config.errors import ConfigError

COMPONENT_KEY = "_component_"


def is_dotted_path(name: str) -> bool:
    """Whether a component name is an import path (``pkg.mod.attr`` or ``pkg.mod:attr``)."""
    return "." in name or ":" in name


def import_allowed(path: str, allow_imports: Sequence[str]) -> bool:
    """Whether ``path`` matches one of the glob patterns (``mypkg.*``, ``mypkg.opt:MyOpt``)."""
    dotted = path.replace(":", ".")
    return any(fnmatch.fnmatchcase(dotted, p.replace(":", ".")) for p in allow_imports)


def refusal(path: str, allow_imports: Sequence[str]) -> str:
    """The message for a refused import."""
    allowed = ", ".join(allow_imports) if allow_imports else "none given"
    return (
        f"import of {path!r} refused: dotted imports must match an `allow_imports` pattern "
        f"(in the config, or --allow-import on the command line; allowed now: {allowed})"
    )


def check_component_keys(
    data: Any,
    allow_imports: Sequence[str],
    source: str | None = None,
    lines: Mapping[str, int | str] | None = None,
    prefix: str = "",
) -> None:
    """Refuse every ``_component_: <dotted path>`` in a raw config tree unless allow-listed.

    Raises:
        ConfigError: naming the key, the file and line, and the path refused.
    """
    lines = lines or {}
    items: Any = data.items() if isinstance(data, Mapping) else []
    if isinstance(data, list):
        items = enumerate(data)
    for name, value in items:
        key = f"{prefix}{name}"
        refused = not isinstance(value, str) or not import_allowed(value, allow_imports)
        if name == COMPONENT_KEY and refused:
            raise ConfigError(key, refusal(str(value), allow_imports), source, lines.get(key))
        check_component_keys(value, allow_imports, source, lines, key + ".")


def import_object(path: str, allow_imports: Sequence[str] = ()) -> Any:
    """Import ``pkg.mod:attr`` or ``pkg.mod.attr`` after checking the allow-list.

    Raises:
        PermissionError: when no pattern in ``allow_imports`` matches.
        ImportError: when the module or attribute does not exist.
    """
    if not import_allowed(path, allow_imports):
        raise PermissionError(refusal(path, allow_imports))
    return load_target(path)


def load_target(path: str) -> Any:
    """Import ``pkg.mod:attr`` or ``pkg.mod.attr`` (no allow-list check: trusted callers only)."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"cannot import {path!r}: {exc}") from exc
        return obj
    raise ImportError(f"cannot import {path!r}: no importable module prefix")
