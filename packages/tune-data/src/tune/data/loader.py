"""A lazy, rank-sharded, resumable loader: rows are tokenized (and packed) as batches are drawn.

`make_loader` builds one from plain (config) settings; `per_rank_batches` splits a global batch
count between data-parallel ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets

from tune.data.collate import collate_packed, collate_padded, collate_preference, collate_prompts
from tune.data.mixture import DatasetMixture
from tune.data.packing import PACKING_STRATEGIES, concat_documents, select_for_pack
from tune.data.sampler import RankCursor, SampleOrder, cursor_from_state, merge_rank_states
from tune.data.sources import DataSourceError, load_source
from tune.data.truncation import DataStats, SampleTooLongError, apply_truncation

logger = logging.getLogger(__name__)


class StreamingLoader:
    """Iterate batches of tensors from a dataset source, tokenizing and packing on the fly.

    Every rank builds the same loader with its own `rank`; together the ranks read each global
    position once. `state_dict()` after any batch and `load_state_dict()` resume the exact
    stream (see `tune.data.sampler`).

    Args:
        source: a `datasets.Dataset`, local file(s), a hub name (see `load_source`), or a
            `DatasetMixture` (with a `MixtureBuilder` of it as `builder`).
        builder: row -> sample callable (`InstructionBuilder`, `ChatBuilder`, ...); its `kind`
            (`sft`, `preference`, `prompt`) picks the collator.
        batch_size: samples (or packed rows) per batch on this rank.
        max_seq_len: longest sample, and the packed row length.
        packing: None, `best_fit` or `greedy` (sft samples only).
        buffer_size: samples held to choose packs from.
        truncation: `truncate`, `drop` or `error` for samples longer than `max_seq_len`.
        seed: shuffle seed; epoch e uses a permutation keyed by (seed, e).
        shuffle: shuffle rows each epoch.
        epochs: passes over the data (None: endless).
        rank: this rank.
        world_size: number of ranks.
        pad_id: padding token id (default: the builder's tokenizer `pad_id`).
        pad_to_multiple_of: padded batches round their length up to this multiple.
        filter_fn: optional row -> bool; rejected rows are counted.
        drop_last: drop a final batch smaller than `batch_size`.
        split: split of a hub dataset.
        max_bad_rows: JSON-lines rows that may be malformed (skipped and counted).
    """

    def __init__(
        self,
        source: str | Path | list[str | Path] | datasets.Dataset | DatasetMixture,
        builder: Callable[[Mapping[str, Any], int], dict[str, Any]],
        *,
        batch_size: int,
        max_seq_len: int,
        packing: str | None = None,
        buffer_size: int = 64,
        truncation: str = "truncate",
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = 1,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int | None = None,
        pad_to_multiple_of: int = 8,
        filter_fn: Callable[[Mapping[str, Any]], bool] | None = None,
        drop_last: bool = True,
        split: str = "train",
        max_bad_rows: int = 0,
    ) -> None:
        self.kind = getattr(builder, "kind", "sft")
        if packing is not None and (packing not in PACKING_STRATEGIES or self.kind != "sft"):
            raise ValueError(
                f"packing must be None or one of {PACKING_STRATEGIES} (sft samples only); "
                f"got {packing!r} for {self.kind!r} samples"
            )
        if batch_size <= 0 or max_seq_len <= 0:
            raise ValueError(
                f"batch_size and max_seq_len must be positive, got {batch_size}, {max_seq_len}"
            )
        self.dataset: datasets.Dataset | DatasetMixture
        if isinstance(source, DatasetMixture):
            self.dataset, skipped = source, 0
        else:
            self.dataset, skipped = load_source(source, split=split, max_bad_rows=max_bad_rows)
        if len(self.dataset) == 0:
            raise DataSourceError(
                f"data source {source!r} has 0 rows (skipped malformed: {skipped})"
            )
        validate = getattr(builder, "validate", None)
        if validate is not None:
            validate(self.dataset)
        self.builder = builder
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.packing = packing
        self.buffer_size = max(1, buffer_size)
        self.truncation = truncation
        self.order = SampleOrder(len(self.dataset), seed=seed, shuffle=shuffle, epochs=epochs)
        self.rank = rank
        self.world_size = world_size
        tokenizer = getattr(builder, "tokenizer", None)
        self.pad_id = pad_id if pad_id is not None else (tokenizer.pad_id if tokenizer else 0)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.filter_fn = filter_fn
        self.drop_last = drop_last
        self.stats = DataStats(skipped_malformed=skipped)
        self._cursor = RankCursor(rank, world_size)
        self._buffer: list[tuple[int, dict[str, Any]]] = []
        self._drops_in_a_row = 0
        if rank == 0:
            logger.info(
                "data: %d rows, %s samples, batch %d x %d tokens, packing=%s, world size %d",
                len(self.dataset), self.kind, batch_size, max_seq_len, packing or "off",
                world_size,
            )  # fmt: skip

    # -- reading samples ---------------------------------------------------------------------

    def _prepare(self, sample: dict[str, Any], where: str) -> dict[str, Any] | None:
        if self.kind == "sft":
            return apply_truncation(sample, self.max_seq_len, self.truncation, self.stats, where)
        if self.kind == "preference":
            sides = {}
            for side in ("chosen", "rejected"):
                kept = apply_truncation(
                    {"tokens": sample[f"{side}_tokens"], "labels": sample[f"{side}_labels"]},
                    self.max_seq_len, self.truncation, self.stats, f"{where} ({side})",
                )  # fmt: skip
                if kept is None:
                    return None
                sides[f"{side}_tokens"], sides[f"{side}_labels"] = kept["tokens"], kept["labels"]
            return {**sample, **sides}
        if len(sample["prompt_tokens"]) > self.max_seq_len:
            if self.truncation == "error":
                raise SampleTooLongError(
                    f"{where}: prompt of {len(sample['prompt_tokens'])} tokens > max_seq_len={self.max_seq_len}"
                )
            self.stats.dropped_too_long += 1
            return None
        return sample

    def _dropped(self) -> None:
        self._drops_in_a_row += 1
        share = -(-self.order.num_rows // self.world_size)
        if self.stats.kept == 0 and not self._buffer and self._drops_in_a_row >= share:
            raise DataSourceError(
                f"no usable samples: every row read so far was dropped ({self.stats.reasons()})"
            )

    def _next_sample(self) -> tuple[int, dict[str, Any]] | None:
        total = self.order.total
        while True:
            position = self._cursor.peek()
            if total is not None and position >= total:
                if self.stats.kept == 0 and not self._buffer:
                    raise DataSourceError(
                        f"no usable samples on rank {self.rank}: the data ran out and every row "
                        f"was dropped ({self.stats.reasons()})"
                    )
                return None
            self._cursor.next_position()
            row_index = self.order.row(position)
            row = self.dataset[row_index]
            self.stats.seen += 1
            if self.filter_fn is not None and not self.filter_fn(row):
                self.stats.dropped_by_filter += 1
                self._dropped()
                continue
            sample = self._prepare(self.builder(row, row_index), f"example {row_index}")
            if sample is None:
                self._dropped()
                continue
            self._drops_in_a_row = 0
            return position, sample

    def _next_item(self) -> dict[str, Any] | None:
        if self.packing is None:
            got = self._next_sample()
            if got is None:
                return None
            self.stats.kept += 1
            self.stats.tokens_kept += len(got[1].get("tokens", ()))
            return got[1]
        while len(self._buffer) < self.buffer_size:
            got = self._next_sample()
            if got is None:
                break
            self._buffer.append(got)
        if not self._buffer:
            return None
        lengths = [len(sample["tokens"]) for _, sample in self._buffer]
        chosen = select_for_pack(lengths, self.max_seq_len, self.packing)
        taken = set(chosen)
        pack = concat_documents([self._buffer[i][1] for i in chosen])
        self._buffer = [entry for i, entry in enumerate(self._buffer) if i not in taken]
        self.stats.kept += len(chosen)
        self.stats.tokens_kept += len(pack["tokens"])
        return pack

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if self.packing is not None:
            return collate_packed(items, self.max_seq_len, self.pad_id)
        if self.kind == "preference":
            return collate_preference(items, self.pad_id, self.pad_to_multiple_of)
        if self.kind == "prompt":
            return collate_prompts(items, self.pad_id, self.pad_to_multiple_of)
        return collate_padded(items, self.pad_id, self.pad_to_multiple_of)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current cursor on; iterating again continues where it stopped."""
        while True:
            items: list[dict[str, Any]] = []
            while len(items) < self.batch_size:
                item = self._next_item()
                if item is None:
                    break
                items.append(item)
            if not items or (self.drop_last and len(items) < self.batch_size):
                return
            yield self._collate(items)

    # -- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The cursor after the last batch drawn (plus counters); plain ints and lists."""
        stats = self.stats.as_dict()
        stats["seen"] -= len(self._buffer)  # buffered rows are read again on resume
        state: dict[str, Any] = {
            "cursor": self._cursor.state_dict(buffered=[pos for pos, _ in self._buffer]),
            "num_rows": self.order.num_rows,
            "seed": self.order.seed,
            "stats": stats,
        }
        if isinstance(self.dataset, DatasetMixture):  # rows per source: another mix is refused
            state["mixture"] = list(self.dataset.counts)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()` of this rank, or of any world size via a merged cursor.

        Args:
            state: a loader state; its `cursor` may be replaced by `merge_rank_states(...)` of
                every rank's cursor to resume at a different world size.
        """
        if state["num_rows"] != self.order.num_rows or state["seed"] != self.order.seed:
            raise ValueError(
                f"loader state is for {state['num_rows']} rows with seed {state['seed']}, this "
                f"loader has {self.order.num_rows} rows with seed {self.order.seed}"
            )
        counts = list(self.dataset.counts) if isinstance(self.dataset, DatasetMixture) else None
        if state.get("mixture") != counts:
            raise ValueError(
                f"loader state is for a mixture of {state.get('mixture')} rows per source, this "
                f"loader reads {counts}"
            )
        self._cursor = cursor_from_state(dict(state["cursor"]), self.rank, self.world_size)
        self._buffer = []
        self._drops_in_a_row = 0
        if state.get("stats") and state["cursor"].get("world_size") == self.world_size:
            self.stats = DataStats(**state["stats"])


def merge_loader_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge every rank's `StreamingLoader.state_dict()` into one that loads at any world size.

    Args:
        states: the states of ranks 0..W-1, saved after the same step.
    """

    if not states:
        raise ValueError("merge_loader_states needs the state of every rank")
    first = states[0]
    if any(s["num_rows"] != first["num_rows"] or s["seed"] != first["seed"] for s in states):
        raise ValueError("loader states disagree on num_rows/seed: they come from different data")
    totals: dict[str, int] = {}
    for s in states:
        for key, value in s.get("stats", {}).items():
            totals[key] = totals.get(key, 0) + value
    merged: dict[str, Any] = {
        "cursor": merge_rank_states([s["cursor"] for s in states]),
        "num_rows": first["num_rows"],
        "seed": first["seed"],
        "stats": totals,
    }
    if "mixture" in first:
        merged["mixture"] = first["mixture"]
    return merged


def make_loader(
    dataset: str | Path | datasets.Dataset | DatasetMixture,
    builder: Callable[[Mapping[str, Any], int], dict[str, Any]],
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
    """A `StreamingLoader` for a training (`endless`) or evaluation (one pass) stream.

    Args:
        dataset: a `datasets.Dataset`, a source (see `load_source`) or a `DatasetMixture`.
        builder: row -> sample callable (a `MixtureBuilder` for a mixture).
        batch_size: samples (or packed rows) per batch on this rank.
        max_seq_len: longest sample, and the packed row length.
        packing: pack samples into rows (`best_fit`) instead of padding each batch.
        truncation: `truncate`, `drop` or `error` for samples longer than `max_seq_len`.
        seed: shuffle seed.
        shuffle: shuffle rows each epoch.
        rank: this rank.
        world_size: number of data-parallel ranks.
        endless: cycle over epochs and drop a short last batch (training); else one pass that
            keeps every row (evaluation).
    """
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
    """Each rank's share of a global batch count (e.g. evaluation's `max_batches`), rounded up.

    Each rank draws its own rows, so `max_batches` per rank would evaluate `data_parallel_size`
    times more rows on several ranks than on one.

    Args:
        max_batches: global batches, or None (no limit: None is returned).
        data_parallel_size: number of data-parallel ranks.
    """
    if max_batches is None:
        return None
    if data_parallel_size < 1:
        raise ValueError(
            f"per_rank_batches: data_parallel_size must be >= 1, got {data_parallel_size}"
        )
    return -(-max_batches // data_parallel_size)
