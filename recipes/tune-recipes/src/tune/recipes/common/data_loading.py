"""Tokenizer, dataset builder and train/validation loaders from a recipe's data settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tune.data import (
    ChatBuilder,
    DataSourceError,
    InstructionBuilder,
    StreamingLoader,
    TextBuilder,
    Tokenizer,
    load_source,
)

logger = logging.getLogger(__name__)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint or tokenizer directory."""
    return Tokenizer.from_dir(path)


def _template(chat_template: str | None) -> str | None:
    if chat_template is not None and Path(chat_template).is_file():
        return Path(chat_template).read_text(encoding="utf-8")
    return chat_template


def build_sample_builder(
    tokenizer: Tokenizer,
    data_format: str,
    *,
    column_map: Mapping[str, str],
    chat_template: str | None,
    train_on_input: bool,
) -> Any:
    """The row -> sample callable for ``data_format`` (instruction, chat or text).

    Args:
        tokenizer: the model's tokenizer.
        data_format: ``instruction``, ``chat`` or ``text``.
        column_map: dataset column -> expected column name.
        chat_template: a bundled template name, a Jinja file or source; None: the tokenizer's.
        train_on_input: train on every token instead of the assistant's only.
    """
    columns = {expected: column for column, expected in column_map.items()} or None
    train_on = "all" if train_on_input else "assistant"
    template = _template(chat_template)
    if data_format == "instruction":
        return InstructionBuilder(tokenizer, template, columns=columns, train_on=train_on)
    if data_format == "chat":
        return ChatBuilder(tokenizer, template, columns=columns, train_on=train_on)
    if data_format == "text":
        return TextBuilder(tokenizer, columns=columns)
    raise ValueError(f"data.format {data_format!r}: expected instruction, chat or text")


def _require_rows(dataset: Any, source: str, split: str, key: str, skipped: int = 0) -> None:
    if len(dataset) == 0:
        raise DataSourceError(
            f"{key}={source} (split {split!r}) has 0 rows (skipped malformed: {skipped}); "
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
    validate: Callable[[Any], None] | None = None,
) -> tuple[Any, Any | None]:
    """(train, validation) datasets; the validation part is None when there is none.

    Args:
        source: a local file or hub dataset name.
        split: the training split (hub datasets).
        validation_split: a named validation split, or None.
        validation_fraction: part of the training rows held out when there is no named split.
        seed: seed of the hold-out split.
        key: the config key of ``source``, named in errors.
        validate: the builder's row checks (``builder.validate``). Run on the whole source before
            a fraction is held out, so a bad row is named by its place in the source; the loader
            checks the parts again, but their rows are shuffled by the split.
    """
    if validation_split is not None and Path(source).exists():
        raise ValueError(
            f"data.validation_split={validation_split!r}: a local file ({source}) has no named "
            "splits; use data.validation_fraction to hold out part of it"
        )
    train, skipped = load_source(source, split=split)
    if skipped:
        logger.warning("%s: skipped %d malformed rows", source, skipped)
    _require_rows(train, source, split, key, skipped)
    if validation_split is not None:
        val, _ = load_source(source, split=validation_split)
        _require_rows(val, source, validation_split, key)
        return train, val
    if validation_fraction > 0:
        if validate is not None:
            validate(train)
        parts = train.train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    return train, None


def make_loader(
    dataset: Any,
    builder: Any,
    *,
    batch_size: int,
    max_seq_len: int,
    packing: bool,
    truncation: str,
    seed: int,
    shuffle: bool,
    rank: int,
    world_size: int,
    endless: bool,
) -> StreamingLoader:
    """A resumable loader over ``dataset`` for this rank (``endless``: cycle over epochs)."""
    return StreamingLoader(
        dataset,
        builder,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        packing="best_fit" if packing else None,
        truncation=truncation,
        seed=seed,
        shuffle=shuffle,
        epochs=None if endless else 1,
        rank=rank,
        world_size=world_size,
        drop_last=endless,
    )


def per_rank_batches(max_batches: int | None, data_parallel_size: int) -> int | None:
    """Per-rank share of ``eval.max_batches``, which counts global batches.

    Each rank draws its own rows, so ``max_batches`` per rank would evaluate ``data_parallel_size``
    times more rows on several ranks than on one. Rounded up when it does not divide.
    """
    if max_batches is None:
        return None
    return -(-max_batches // data_parallel_size)
