"""Apply a caller's key-map function (str -> str, or None to drop a key) to a state dict."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from tune.checkpoint.errors import StateDictMismatchError

KeyMap = Callable[[str], "str | None"]
V = TypeVar("V")


def rename_keys(state: Mapping[str, V], key_map: KeyMap | None, *, where: str = "") -> dict[str, V]:
    """Rename every key with `key_map`; keys mapped to None are dropped.

    Args:
        state: name -> value.
        key_map: str -> str | None; None keeps the names.
        where: a file or directory named in error messages.

    Raises:
        StateDictMismatchError: two keys map to the same name.
    """
    if key_map is None:
        return dict(state)
    out: dict[str, V] = {}
    source: dict[str, str] = {}
    for key, value in state.items():
        new = key_map(key)
        if new is None:
            continue
        if new in out:
            raise StateDictMismatchError(
                f"{where or 'state dict'}: keys {source[new]!r} and {key!r} both map to {new!r}"
            )
        out[new] = value
        source[new] = key
    return out
