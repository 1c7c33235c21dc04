"""Cheap checks of local data files that name the file, line and byte of what is wrong.

`datasets` and `pyarrow` fail on bad bytes or on a row whose type differs from the rows before it
with an error that names neither the file nor the row; these checks find the place instead. The
UTF-8 scan runs before a file is loaded; the row searches run only after a load has failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from tune.data.errors import DataSourceError


def decode_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, text)` (1-based) of a UTF-8 file; a UTF-8 BOM is dropped.

    Raises `DataSourceError` naming the file, line and byte offsets of the first invalid byte.

    Args:
        path: the file.
    """
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.start + 4]
                raise DataSourceError(
                    f"{path}:{number}: invalid UTF-8 byte(s) {bad!r} at column {error.start + 1} "
                    f"(byte offset {offset + error.start} in the file); expected UTF-8 text. "
                    "Re-encode the file (e.g. iconv -f latin1 -t utf-8)"
                ) from error
            offset += len(raw)
            yield number, text


def check_utf8(path: str | Path) -> None:
    """Raise `DataSourceError` naming the file, line and byte offset if it is not valid UTF-8.

    Args:
        path: the file.
    """
    for _ in decode_lines(path):
        pass


def json_error_location(path: str | Path) -> str | None:
    """`file:line:column: <what is wrong>` for a JSON document that does not parse, else None.

    Args:
        path: a `.json` file holding one document.
    """
    text = "".join(line for _, line in decode_lines(path))
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return f"{path}:{error.lineno}:{error.colno}: malformed JSON ({error.msg})"
    return None


def _storable(rows: Sequence[dict[str, Any]]) -> Exception | None:
    try:
        datasets.Dataset.from_list(list(rows))
    except Exception as error:  # pyarrow raises TypeError, ValueError or ArrowException
        return error
    return None


def first_unstorable_row(
    rows: Sequence[dict[str, Any]],
) -> tuple[int, str | None, Exception] | None:
    """The first row that cannot be stored with the rows before it: index, key (if one key
    alone fails) and the error.

    Arrow infers one type per key from the rows; a key that holds a string in one row and a
    number or list in another (or a lone surrogate escape) fails the whole table. A binary
    search over prefixes finds the row (about log2(n) attempts; run only after a failure).

    Args:
        rows: the rows, as parsed.
    """
    error = _storable(rows)
    if error is None:
        return None
    low, high = 0, len(rows)  # rows[:low] stores; rows[:high] fails
    while high - low > 1:
        middle = (low + high) // 2
        found = _storable(rows[:middle])
        if found is None:
            low = middle
        else:
            high, error = middle, found
    index = high - 1
    for key in rows[index]:
        if _storable([{key: row.get(key)} for row in rows[: index + 1]]) is not None:
            return index, key, error
    return index, None, error


def _mixed_types(value: Any) -> str | None:
    """For a list of dicts (messages), the first sub-key whose values differ in type, described."""
    if not isinstance(value, list):
        return None
    seen: dict[str, tuple[str, int]] = {}
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            continue
        for key, sub in item.items():
            if sub is None:
                continue
            kind = type(sub).__name__
            first = seen.setdefault(key, (kind, position))
            if first[0] != kind:
                return f"{key!r} is {first[0]} in item {first[1]} but {kind} in item {position}"
    return None


def unstorable_row_message(
    location: str, row: dict[str, Any], key: str | None, error: Exception
) -> str:
    """The message for a row Arrow cannot store.

    Args:
        location: the row's place (`file:line`).
        row: the row.
        key: the key that fails, if found.
        error: what `datasets` raised.
    """
    what = "" if key is None else f"key {key!r} ({type(row[key]).__name__} in this row) "
    mixed = None if key is None else _mixed_types(row[key])
    if mixed is not None:
        what = f"{what}mixes types ({mixed}), so it "
    return (
        f"{location}: {what}cannot be stored with the rows before it "
        f"({type(error).__name__}: {error}); every row must give a key the same type (e.g. "
        "'content' always a string), and text must be valid Unicode (no lone surrogate escapes)"
    )
