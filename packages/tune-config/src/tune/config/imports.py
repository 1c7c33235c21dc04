"""Dotted imports named in configs, refused unless the command line allows them.

A config is data from anyone; the person who runs the program decides what code it may reach. So
only the caller's patterns (a command line's ``--allow-import PATTERN``, or the
``TUNE_ALLOW_IMPORTS`` environment variable, patterns separated by commas) grant an import, never
the config itself. Patterns match whole names:
``*`` stands for one name and never crosses a ``.`` or ``:``, so ``mypkg.*`` allows
``mypkg.optim`` but not ``mypkg.optim.helpers:os.system``. An allowed path must also lead to a
class or function *defined* in the allowed module (or one of its sub-modules): attributes are
not walked through other modules, and a name the module merely imported (``from os import
system``) is refused.
"""

from __future__ import annotations

import importlib
import os
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any

from tune.config.errors import ConfigError

COMPONENT_KEY = "_component_"
ALLOW_ENV = "TUNE_ALLOW_IMPORTS"
ALLOW_HINT = f"pass --allow-import PATTERN on the command line (or set {ALLOW_ENV})"


def is_dotted_path(name: str) -> bool:
    """Whether a component name is an import path (``pkg.mod.attr`` or ``pkg.mod:attr``)."""
    return "." in name or ":" in name


def allowed_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The patterns of ``TUNE_ALLOW_IMPORTS`` (comma-separated; blanks ignored)."""
    raw = (os.environ if environ is None else environ).get(ALLOW_ENV, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # ':' and '.' are both separators: `pkg.mod:Cls` and `pkg.mod.Cls` name the same thing.
    parts = []
    for char in pattern.replace(":", "."):
        if char == "*":
            parts.append(r"[^.]*")
        elif char == "?":
            parts.append(r"[^.]")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts))


def import_allowed(path: str, allow_imports: Sequence[str]) -> bool:
    """Whether ``path`` matches a pattern as a whole (``*`` never crosses ``.`` or ``:``)."""
    dotted = path.replace(":", ".")
    return any(_pattern_regex(p).fullmatch(dotted) for p in allow_imports if p)


def refusal(path: str, allow_imports: Sequence[str]) -> str:
    """The message for a refused import."""
    allowed = ", ".join(allow_imports) if allow_imports else "none"
    return f"import of {path!r} refused: not allowed by the command line; {ALLOW_HINT} (allowed now: {allowed})"


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

    The object must be a class or function defined in the module named by the path (or a
    sub-module of it), reached without passing through another module.

    Raises:
        PermissionError: no pattern matches, or the object is not defined where the path says.
        ImportError: the module or attribute does not exist.
    """
    if not import_allowed(path, allow_imports):
        raise PermissionError(refusal(path, allow_imports))
    module_name, _, obj = _resolve(path)
    defined_in = getattr(obj, "__module__", None)
    if not isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType) or not (
        isinstance(defined_in, str)
        and (defined_in == module_name or defined_in.startswith(module_name + "."))
    ):
        raise PermissionError(
            f"import of {path!r} refused: it resolves to {_describe(obj)}, which is not a "
            f"class or function defined in {module_name!r} (an allowed path must name what "
            "its module defines, not a name it imported from elsewhere)"
        )
    return obj


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}.{name}" if module else f"a {type(obj).__name__} object"


def _walk(path: str, module_name: str, obj: Any, attrs: list[str]) -> Any:
    for attr in attrs:
        if attr.startswith("_"):
            raise PermissionError(f"import of {path!r} refused: {attr!r} is a private name")
        try:
            obj = getattr(obj, attr)
        except AttributeError as exc:
            raise ImportError(f"cannot import {path!r}: {exc}") from exc
        if isinstance(obj, types.ModuleType):
            raise PermissionError(
                f"import of {path!r} refused: {attr!r} is a module reached through "
                f"{module_name!r}; name the module itself"
            )
    return obj


def _resolve(path: str) -> tuple[str, list[str], Any]:
    """(module name, attribute names, object) of an import path."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
        attrs = attr.split(".")
        module = importlib.import_module(module_name)
        return module.__name__, attrs, _walk(path, module_name, module, attrs)
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                raise  # the module exists but imports something missing
            continue
        return module.__name__, parts[cut:], _walk(path, module_name, module, parts[cut:])
    raise ImportError(f"cannot import {path!r}: no importable module prefix")


def load_target(path: str) -> Any:
    """Import a path that the program itself names (a registry's builtin): no allow-list check."""
    return _resolve(path)[2]
