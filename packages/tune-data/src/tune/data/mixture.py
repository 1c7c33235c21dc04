"""A weighted mixture of datasets, in an order that depends only on (seed, weights, lengths).

    mixture = DatasetMixture([code, chat], weights=[1, 3], seed=0, names=["code", "chat"])
    loader = StreamingLoader(mixture, MixtureBuilder(mixture, [code_builder, chat_builder]), ...)

Source i gets `n_i` of the mixture's `num_rows` rows (default: the sources' total), its share of
the weights rounded by largest remainder (the counts add up to `num_rows` exactly). Its rows are
taken in passes, each a fresh seeded permutation (rows in order with `shuffle=False`): a source
whose `n_i` is above its length repeats rows, one below it contributes a seeded subset. The
sources are interleaved evenly: the k-th row of source i sits at (k + 1/2) / n_i of the way
through, so every prefix holds each source within about a row of its share.

A `StreamingLoader` reads a mixture like one dataset: global positions, strided over the ranks,
with a cursor that resumes at any world size (`tune.data.sampler`). The mixture is fixed before
the ranks split it, so its order, and where a resumed run continues, do not depend on the world
size. Each row is built by its own source's builder (`MixtureBuilder`), so the sources may have
different columns, formats or chat shapes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tune.data.errors import DataSourceError
from tune.data.sources import split_source

logger = logging.getLogger(__name__)

_SEED_MIX = 1_000_003

__all__ = [
    "DatasetMixture",
    "MixtureBuilder",
    "MixtureSource",
    "MixtureSplit",
    "mixture_counts",
    "mixture_order",
    "split_mixture",
]


def mixture_counts(
    lengths: Sequence[int], weights: Sequence[float] | None, num_rows: int | None = None
) -> list[int]:
    """Rows each source contributes: `num_rows` shared by weight (largest remainder).

    Args:
        lengths: rows in each source (> 0).
        weights: each source's relative share (> 0); None: shares proportional to `lengths`
            (with `num_rows` None: every row once).
        num_rows: rows in the mixture (default: `sum(lengths)`).
    """
    if not lengths:
        raise ValueError("a mixture needs at least one dataset")
    if weights is None:
        if num_rows is None:
            return list(lengths)
        weights = [float(n) for n in lengths]
    if len(weights) != len(lengths):
        raise ValueError(f"{len(weights)} weights for {len(lengths)} datasets")
    for i, weight in enumerate(weights):
        if isinstance(weight, bool) or not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight {i} must be a positive number, got {weight!r}")
    total = sum(lengths) if num_rows is None else num_rows
    if total <= 0:
        raise ValueError(f"num_rows must be positive, got {total}")
    scale = math.fsum(weights)
    exact = [weight / scale * total for weight in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _pass(length: int, seed: int, source: int, index: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(length)
    key = ((seed * _SEED_MIX + source) * _SEED_MIX + index) % (2**63)
    return torch.randperm(length, generator=torch.Generator().manual_seed(key))


def mixture_order(
    lengths: Sequence[int], counts: Sequence[int], seed: int = 0, shuffle: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source and row of every position of the mixture.

    Args:
        lengths: rows in each source.
        counts: rows each source contributes (`mixture_counts`).
        seed: seed of each source's passes.
        shuffle: permute each pass over a source (False: its rows in order).

    Returns:
        `(source, row)`, int64 tensors of shape [sum(counts)].
    """
    sources, rows, keys = [], [], []
    for i, (length, count) in enumerate(zip(lengths, counts, strict=True)):
        if count == 0:
            continue
        passes = [_pass(length, seed, i, p, shuffle) for p in range(-(-count // length))]
        rows.append(torch.cat(passes)[:count])
        sources.append(torch.full((count,), i, dtype=torch.long))
        # Even spread; equal keys (same fraction) keep the sources' order (a stable sort).
        keys.append((2 * torch.arange(count, dtype=torch.float64) + 1) / (2 * count))
    order = torch.sort(torch.cat(keys), stable=True).indices
    return torch.cat(sources)[order], torch.cat(rows)[order]


class DatasetMixture:
    """Map-style rows of several datasets, mixed by weight (see the module docstring).

    Args:
        parts: the sources (`datasets.Dataset` or any sized, indexable rows).
        weights: each source's relative share of the rows (> 0); None: every row once.
        seed: seed of the sources' passes.
        shuffle: permute each pass over a source (False: rows in order).
        num_rows: rows in the mixture (default: the sources' total).
        names: each source's name in errors and logs (e.g. its config key `data.sources.1`).
    """

    def __init__(
        self,
        parts: Sequence[Any],
        weights: Sequence[float] | None = None,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_rows: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.parts = list(parts)
        self.names = (
            list(names) if names is not None else [f"dataset {i}" for i in range(len(parts))]
        )
        if len(self.names) != len(self.parts):
            raise ValueError(f"{len(self.names)} names for {len(self.parts)} datasets")
        self.lengths = [len(part) for part in self.parts]
        for name, length in zip(self.names, self.lengths, strict=True):
            if length == 0:
                raise DataSourceError(f"{name} has 0 rows; a mixture needs rows from every source")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.seed = seed
        self.counts = mixture_counts(self.lengths, weights, num_rows)
        for name, count in zip(self.names, self.counts, strict=True):
            if count == 0:
                logger.warning("%s: its weight gives it none of the mixture's rows", name)
        self._source, self._row = mixture_order(self.lengths, self.counts, seed, shuffle)

    def __len__(self) -> int:
        return int(self._source.numel())

    def locate(self, index: int) -> tuple[int, int]:
        """`(source, row)`: which source, and which of its rows, mixture row `index` is."""
        if not 0 <= index < len(self):
            raise IndexError(f"mixture row {index} out of range [0, {len(self)})")
        return int(self._source[index]), int(self._row[index])

    def __getitem__(self, index: int) -> Any:
        source, row = self.locate(index)
        return self.parts[source][row]

    @property
    def column_names(self) -> list[str]:
        """The columns of every source, each once, in order of appearance."""
        names = [c for part in self.parts for c in getattr(part, "column_names", ())]
        return list(dict.fromkeys(names))


@contextmanager
def _naming(name: str) -> Iterator[None]:
    """Prefix a ValueError (`DataSourceError`, `MessageError`, ...) with the source's name."""
    try:
        yield
    except ValueError as error:
        try:
            named = type(error)(f"{name}: {error}")
        except Exception:  # an error type with another constructor: keep it as it is
            raise error from None
        raise named from error


class MixtureBuilder:
    """Build each row of a `DatasetMixture` with its own source's builder; errors name the source.

    Args:
        mixture: the mixture whose rows it builds (the row indices it is given are the
            mixture's).
        builders: one row -> sample builder per source (`InstructionBuilder`, `ChatBuilder`,
            ...), all making samples of one `kind`.
    """

    def __init__(self, mixture: DatasetMixture, builders: Sequence[Any]) -> None:
        if len(builders) != len(mixture.parts):
            raise ValueError(f"{len(builders)} builders for {len(mixture.parts)} datasets")
        kinds = {getattr(builder, "kind", "sft") for builder in builders}
        if len(kinds) != 1:
            raise ValueError(f"a mixture's builders must make one kind of sample, got {kinds}")
        self.kind = kinds.pop()
        self.mixture = mixture
        self.builders = list(builders)
        self.tokenizer = getattr(builders[0], "tokenizer", None)

    def validate(self, dataset: Any) -> None:
        """Run each source builder's `validate` on its source (errors name the source)."""
        if dataset is not self.mixture:
            raise ValueError("a MixtureBuilder checks and builds the rows of its own mixture")
        for name, part, builder in zip(
            self.mixture.names, self.mixture.parts, self.builders, strict=True
        ):
            check = getattr(builder, "validate", None)
            if check is not None:
                with _naming(name):
                    check(part)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        source, source_row = self.mixture.locate(index)
        with _naming(self.mixture.names[source]):
            sample: dict[str, Any] = self.builders[source](row, source_row)
        return sample


@dataclass(frozen=True)
class MixtureSource:
    """One dataset of a mixture, from plain (config) settings.

    Args:
        source: a local file or a hub dataset name (see `load_source`).
        builder: its row -> sample builder (its `validate` checks the rows before a hold-out).
        weight: its share of the training rows, relative to the other sources' (> 0).
        split: its training split (hub datasets).
        validation_split: its named validation split (hub datasets), or None.
        key: its config key (`data.sources.1`), named in errors.
    """

    source: str
    builder: Callable[[Mapping[str, Any], int], dict[str, Any]]
    weight: float = 1.0
    split: str = "train"
    validation_split: str | None = None
    key: str = ""


@dataclass(frozen=True)
class MixtureSplit:
    """The training mixture and the held-out rows of a `split_mixture`, with their builders."""

    train: DatasetMixture
    builder: MixtureBuilder
    validation: DatasetMixture | None
    validation_builder: MixtureBuilder | None


def split_mixture(
    sources: Sequence[MixtureSource],
    *,
    validation_fraction: float,
    seed: int,
    shuffle: bool = True,
    num_rows: int | None = None,
) -> MixtureSplit:
    """Split each source (as `split_source` does), mix the training parts by weight.

    A source holds out its `validation_split`, else `validation_fraction` of its rows (seeded),
    else nothing. The validation mixture holds every held-out row once, not re-weighted: a
    validation loss is the mean over the held-out rows of all sources.

    Args:
        sources: the datasets and their settings.
        validation_fraction: part of each source held out when it has no `validation_split`.
        seed: seed of the hold-out and of the mixture.
        shuffle: permute each pass over a source (False: its rows in order).
        num_rows: rows in the training mixture (default: the training parts' total).
    """
    if not sources:
        raise ValueError("split_mixture needs at least one source")
    trains, train_builders, train_names = [], [], []
    vals, val_builders, val_names = [], [], []
    for i, spec in enumerate(sources):
        key = spec.key or f"sources.{i}"
        validate = getattr(spec.builder, "validate", None)
        train, val = split_source(
            spec.source, spec.split, spec.validation_split, validation_fraction, seed,
            key=f"{key}.source", validate=validate,
        )  # fmt: skip
        name = key
        trains.append(train)
        train_builders.append(spec.builder)
        train_names.append(name)
        if val is not None:
            vals.append(val)
            val_builders.append(spec.builder)
            val_names.append(name)
    weights = [spec.weight for spec in sources]
    train_mix = DatasetMixture(
        trains, weights, seed=seed, shuffle=shuffle, num_rows=num_rows, names=train_names
    )
    logger.info(
        "mixture of %d rows: %s", len(train_mix),
        ", ".join(f"{c} of {s.key or n}={s.source}"
                  for s, n, c in zip(sources, train_names, train_mix.counts, strict=True)),
    )  # fmt: skip
    if not vals:
        return MixtureSplit(train_mix, MixtureBuilder(train_mix, train_builders), None, None)
    val_mix = DatasetMixture(vals, None, seed=seed, shuffle=False, names=val_names)
    return MixtureSplit(
        train_mix,
        MixtureBuilder(train_mix, train_builders),
        val_mix,
        MixtureBuilder(val_mix, val_builders),
    )
