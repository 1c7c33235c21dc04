"""Open a dataset source: a hub name, local json/jsonl/csv/parquet files, or a `datasets.Dataset`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class DataSourceError(ValueError):
    """A source that cannot be read: a malformed row, a missing column, no rows."""


def read_jsonl(path: str | Path, max_bad_rows: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Read a JSON-lines file; a malformed line raises with file and line number.

    Args:
        path: the file.
        max_bad_rows: skip up to this many malformed lines (counted); one more raises.

    Returns:
        The rows and the number of skipped lines.
    """
    rows: list[dict[str, Any]] = []
    skipped = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
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
    with open(path, encoding="utf-8") as handle:
        head = handle.read(1).lstrip()
        while head == "" or head.isspace():
            char = handle.read(1)
            if not char:
                return False
            head = char.strip()
    return head == "{"


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
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"data files not found: {missing}")
        kind = _local_format(paths)
        if kind == "json" and all(_is_jsonl(p) for p in paths):
            rows: list[dict[str, Any]] = []
            skipped = 0
            for path in paths:
                file_rows, file_skipped = read_jsonl(path, max_bad_rows - skipped)
                rows.extend(file_rows)
                skipped += file_skipped
            return datasets.Dataset.from_list(rows), skipped
        loaded = datasets.load_dataset(kind, data_files=[str(p) for p in paths], split="train")
        return loaded, 0
    if not isinstance(source, str):
        raise DataSourceError(f"cannot open data source {source!r}")
    loaded = datasets.load_dataset(source, split=split, **load_kwargs)
    if not isinstance(loaded, datasets.Dataset):
        raise DataSourceError(f"{source!r} split {split!r} is not a map-style datasets.Dataset")
    return loaded, 0


def require_columns(dataset: datasets.Dataset, columns: Sequence[str], where: str) -> None:
    """Raise naming each missing column and the available ones.

    Args:
        dataset: the dataset.
        columns: the column names the builder reads.
        where: what needs them (e.g. `instruction dataset`), for the message.
    """
    available = list(dataset.column_names)
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataSourceError(
            f"{where}: column(s) {missing} not found; available columns: {available}. "
            "Map them with columns={...}."
        )
    if len(dataset) == 0:
        raise DataSourceError(f"{where}: the dataset has 0 rows")
