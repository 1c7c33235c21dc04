"""Open a dataset source: a hub name, local json/jsonl/csv/parquet files, or a `datasets.Dataset`."""

from __future__ import annotations

import bisect
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from tune.data.column_maps import flow_mapping
from tune.data.errors import DataSourceError
from tune.data.file_checks import (
    check_utf8,
    decode_lines,
    first_unstorable_row,
    json_error_location,
    unstorable_row_message,
)

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

__all__ = [
    "DataSourceError",
    "dataset_origin",
    "load_source",
    "read_jsonl",
    "require_columns",
    "row_location",
    "split_source",
]


@dataclass(frozen=True)
class _FileRows:
    """Where the rows of one file sit in a dataset loaded by `load_source`."""

    path: str
    first: int  # dataset index of the file's first row
    lines: tuple[int, ...] | None  # 1-based line of each row (JSON lines); None: row numbers


_ORIGINS: OrderedDict[str, tuple[_FileRows, ...]] = OrderedDict()
_MAX_ORIGINS = 32  # datasets remembered (by fingerprint); the oldest are forgotten


def _remember(dataset: datasets.Dataset, files: Sequence[_FileRows]) -> None:
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        return
    _ORIGINS[fingerprint] = tuple(files)
    _ORIGINS.move_to_end(fingerprint)
    while len(_ORIGINS) > _MAX_ORIGINS:
        _ORIGINS.popitem(last=False)


def row_location(dataset: datasets.Dataset, index: int) -> str | None:
    """`file:line` (JSON lines) or `file row N` (1-based) of a row of a dataset `load_source`
    read from local files; None for other datasets (or after `select`, `map`, a split, ...).

    Args:
        dataset: the dataset.
        index: the row's index in it.
    """
    files = _ORIGINS.get(getattr(dataset, "_fingerprint", None) or "")
    if not files:
        return None
    where = bisect.bisect_right([f.first for f in files], index) - 1
    if where < 0:
        return None
    file = files[where]
    position = index - file.first
    if file.lines is None:
        return f"{file.path} row {position + 1}"
    if position >= len(file.lines):
        return None
    return f"{file.path}:{file.lines[position]}"


def _read_jsonl_lines(
    path: str | Path, max_bad_rows: int = 0
) -> tuple[list[dict[str, Any]], list[int], int]:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    skipped = 0
    for number, line in decode_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as error:
            if skipped < max_bad_rows:
                skipped += 1
                logger.warning("skipping malformed row %s:%d: %s", path, number, error)
                continue
            raise DataSourceError(
                f"{path}:{number}: malformed JSON row ({error}); "
                f"skipped so far {skipped} (max_bad_rows={max_bad_rows})"
            ) from error
        rows.append(row)
        lines.append(number)
    return rows, lines, skipped


def read_jsonl(path: str | Path, max_bad_rows: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Read a JSON-lines file; a malformed line or invalid UTF-8 raises with file and line number.

    Args:
        path: the file.
        max_bad_rows: skip up to this many malformed lines (counted); one more raises.
            Invalid UTF-8 always raises.

    Returns:
        The rows and the number of skipped lines.
    """
    rows, _, skipped = _read_jsonl_lines(path, max_bad_rows)
    return rows, skipped


def _local_format(files: Sequence[Path]) -> str:
    kinds = {_LOCAL_FORMATS.get(f.suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise DataSourceError(
            f"local files must all be one of {sorted(_LOCAL_FORMATS)}, got {[str(f) for f in files]}"
        )
    return kinds.pop()  # type: ignore[return-value]


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    with open(path, "rb") as handle:  # bytes: a bad byte is named later, by line
        while chunk := handle.read(4096):
            head = chunk.removeprefix(b"\xef\xbb\xbf").lstrip()
            if head:
                return head.startswith(b"{")
    return False


def _load_jsonl(paths: Sequence[Path], max_bad_rows: int) -> tuple[datasets.Dataset, int]:
    rows: list[dict[str, Any]] = []
    files: list[_FileRows] = []
    skipped = 0
    for path in paths:
        file_rows, lines, file_skipped = _read_jsonl_lines(path, max_bad_rows - skipped)
        files.append(_FileRows(str(path), len(rows), tuple(lines)))
        rows.extend(file_rows)
        skipped += file_skipped
    try:
        dataset = datasets.Dataset.from_list(rows)
    except Exception as error:  # pyarrow: a key of two types, or a lone surrogate
        found = first_unstorable_row(rows)
        if found is None:
            raise DataSourceError(
                f"cannot store the rows of {[str(p) for p in paths]}: {error}"
            ) from error
        index, key, cause = found
        file = files[bisect.bisect_right([f.first for f in files], index) - 1]
        assert file.lines is not None
        location = f"{file.path}:{file.lines[index - file.first]}"
        raise DataSourceError(unstorable_row_message(location, rows[index], key, cause)) from error
    _remember(dataset, files)
    return dataset, skipped


def _diagnose_load_failure(kind: str, paths: Sequence[Path], error: Exception) -> DataSourceError:
    """The error for a json/csv/parquet file `datasets` failed to load, naming the place if found."""
    if kind == "json":
        for path in paths:
            location = json_error_location(path)
            if location is not None:
                return DataSourceError(location)
            document = json.loads("".join(line for _, line in decode_lines(path)))
            if isinstance(document, list) and all(isinstance(r, dict) for r in document):
                found = first_unstorable_row(document)
                if found is not None:
                    index, key, cause = found
                    location = f"{path} item {index + 1}"
                    return DataSourceError(
                        unstorable_row_message(location, document[index], key, cause)
                    )
    return DataSourceError(
        f"cannot read {[str(p) for p in paths]} as {kind}: {type(error).__name__}: {error}"
    )


def _load_local(paths: Sequence[Path], max_bad_rows: int) -> tuple[datasets.Dataset, int]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"data files not found: {missing}")
    kind = _local_format(paths)
    if kind == "json" and all(_is_jsonl(p) for p in paths):
        return _load_jsonl(paths, max_bad_rows)
    if kind != "parquet":
        for path in paths:  # before datasets, whose decode error names neither file nor line
            check_utf8(path)
    try:
        loaded = datasets.load_dataset(kind, data_files=[str(p) for p in paths], split="train")
    except Exception as error:
        raise _diagnose_load_failure(kind, paths, error) from error
    if len(paths) == 1:
        _remember(loaded, [_FileRows(str(paths[0]), 0, None)])
    return loaded, 0


def load_source(
    source: str | Path | Sequence[str | Path] | datasets.Dataset,
    split: str = "train",
    max_bad_rows: int = 0,
    **load_kwargs: Any,
) -> tuple[datasets.Dataset, int]:
    """Open a map-style dataset (rows are read lazily by index; nothing is tokenized here).

    Args:
        source: a `datasets.Dataset`, a local file or list of files (`.json`, `.jsonl`, `.csv`,
            `.parquet`), or a hub dataset name (passed to `datasets.load_dataset`).
        split: the split of a hub dataset.
        max_bad_rows: JSON-lines only: malformed lines to skip (and count) before raising.
        **load_kwargs: passed to `datasets.load_dataset` for hub names (e.g. `name`, `revision`).

    Returns:
        The dataset and the number of malformed rows skipped.
    """
    if isinstance(source, datasets.Dataset):
        return source, 0
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise DataSourceError(f"split {split!r} not in the DatasetDict; splits: {list(source)}")
        return source[split], 0
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if all(p.suffix.lower() in _LOCAL_FORMATS for p in paths):
        return _load_local(paths, max_bad_rows)
    if not isinstance(source, str):
        raise DataSourceError(f"cannot open data source {source!r}")
    loaded = datasets.load_dataset(source, split=split, **load_kwargs)
    if not isinstance(loaded, datasets.Dataset):
        raise DataSourceError(f"{source!r} split {split!r} is not a map-style datasets.Dataset")
    return loaded, 0


def dataset_origin(dataset: datasets.Dataset) -> str | None:
    """The local file(s) `load_source` read a dataset from (comma-separated), or None."""
    files = _ORIGINS.get(getattr(dataset, "_fingerprint", None) or "")
    return ", ".join(f.path for f in files) if files else None


def require_columns(
    dataset: datasets.Dataset,
    columns: Sequence[str] | Mapping[str, str],
    where: str,
    *,
    columns_key: str = "columns",
) -> None:
    """Raise naming each missing column, the file, the available columns and the map to write.

    Args:
        dataset: the dataset.
        columns: the column names the builder reads, or its map of expected name -> column.
        where: what needs them (e.g. `instruction dataset`), for the message.
        columns_key: how the message names the column map (`columns`, `data.column_map`, ...).
    """
    mapping = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    available = list(dataset.column_names)
    missing = {expected: c for expected, c in mapping.items() if c not in available}
    if missing:
        origin = dataset_origin(dataset)
        wanted = flow_mapping({expected: "<dataset column>" for expected in missing})
        raise DataSourceError(
            f"{where}: column(s) {list(missing.values())} not found"
            f"{f' in {origin}' if origin else ''}; available columns: {available}. "
            f"Map them with {columns_key}={wanted}"
        )
    if len(dataset) == 0:
        raise DataSourceError(f"{where}: the dataset has 0 rows")


def _require_rows(dataset: datasets.Dataset, where: str, skipped: int = 0) -> None:
    if len(dataset) == 0:
        raise DataSourceError(
            f"{where} has 0 rows (skipped malformed: {skipped}); "
            "expected a file or dataset with at least one row"
        )


def split_source(
    source: str,
    split: str,
    validation_split: str | None,
    validation_fraction: float,
    seed: int,
    *,
    key: str = "data.source",
    validate: Callable[[datasets.Dataset], None] | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The (train, validation) datasets of a source; validation is None when there is none.

    Args:
        source: a local file or hub dataset name (see `load_source`).
        split: the training split (hub datasets).
        validation_split: a named validation split (hub datasets), or None.
        validation_fraction: part of the training rows held out (shuffled, seeded) when there
            is no named split; 0: no validation set.
        seed: seed of the hold-out split.
        key: the config key of `source`, named in errors; its section (`data` of `data.source`)
            names the `validation_split` and `validation_fraction` keys too.
        validate: row checks (a builder's `validate`), run on the whole source before a fraction
            is held out, so a bad row is named by its place in the source; a `StreamingLoader`
            checks the parts again, but their rows are shuffled by the split.

    Raises:
        ValueError: a named validation split of a local file (it has none).
        DataSourceError: the source or its validation split has 0 rows.
    """
    section = key.rpartition(".")[0]
    prefix = f"{section}." if section else ""
    if validation_split is not None and Path(source).exists():
        raise ValueError(
            f"{prefix}validation_split={validation_split!r}: a local file ({source}) has no named "
            f"splits; use {prefix}validation_fraction to hold out part of it"
        )
    train, skipped = load_source(source, split=split)
    if skipped:
        logger.warning("%s: skipped %d malformed rows", source, skipped)
    _require_rows(train, f"{key}={source} (split {split!r})", skipped)
    if validation_split is not None:
        val, _ = load_source(source, split=validation_split)
        _require_rows(val, f"{key}={source} (split {validation_split!r})")
        return train, val
    if validation_fraction > 0:
        if validate is not None:
            validate(train)
        parts = train.train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    return train, None
