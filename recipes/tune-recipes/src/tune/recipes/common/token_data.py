"""The token-level data of the sft and distill recipes: rows -> samples -> (padding-free) batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tune.data import (
    MixtureSource,
    build_sample_builder,
    make_loader,
    padding_free_batch,
    padding_free_batches,
    per_rank_batches,
    resolve_padding_free,
    split_mixture,
    split_source,
)
from tune.train import count_batch_tokens


@dataclass
class TokenData:
    """A recipe's training loader, its held-out rows and how batches reach the device.

    Args:
        loader: the endless, rank-aware training loader (its position is checkpointed).
        total_steps: the run's optimizer steps (``max_steps``, else epochs over the rows).
        has_validation: held-out rows exist.
    """

    loader: Any
    total_steps: int
    has_validation: bool
    _val: Any
    _builder: Any
    _args: dict[str, Any]
    _padding_free: bool
    _device: torch.device
    _max_eval_batches: int | None
    _batches: Iterator[Any] | None = None

    def next_micro_batches(self, count: int) -> tuple[list[dict[str, torch.Tensor]], int]:
        """``count`` micro-batches on the device and their real token count (no padding, not even
        a pack's tail)."""
        if self._batches is None:
            self._batches = iter(self.loader)
        mbs = [
            padding_free_batch({k: v.to(self._device) for k, v in next(self._batches).items()},
                               self._padding_free)
            for _ in range(count)
        ]  # fmt: skip
        tokens = sum(count_batch_tokens(mb) for mb in mbs)
        return mbs, tokens

    def validation_batches(self) -> Any:
        """One pass over this rank's held-out batches (``eval.max_batches`` of them at most)."""
        loader = make_loader(self._val, self._builder, shuffle=False, endless=False, **self._args)
        return padding_free_batches(loader, self._padding_free)

    @property
    def max_eval_batches(self) -> int | None:
        """``eval.max_batches`` split over the data-parallel ranks."""
        return self._max_eval_batches


def _split(cfg: Any, tokenizer: Any) -> tuple[Any, Any, Any, Any]:
    """(train rows, their builder, held-out rows or None, their builder) of ``data.source``,
    or of the weighted mixture of ``data.sources``."""
    d = cfg.data

    def builder(data_format: str, column_map: dict[str, str] | None, key: str) -> Any:
        if column_map is None:  # a source without a map of its own reads data.column_map
            column_map, key = d.column_map, "data.column_map"
        return build_sample_builder(
            tokenizer, data_format, column_map=column_map, column_map_key=key,
            chat_template=cfg.tokenizer.chat_template, train_on_input=d.train_on_input,
        )  # fmt: skip

    if not d.sources:
        one = builder(d.format, d.column_map, "data.column_map")
        train, val = split_source(d.source, d.split, d.validation_split, d.validation_fraction,
                                  d.seed, validate=one.validate)  # fmt: skip
        return train, one, val, one
    mix = split_mixture([
        MixtureSource(s.source, builder(s.format or d.format, s.column_map,
                      f"data.sources.{i}.column_map"), s.weight, s.split, s.validation_split,
                      key=f"data.sources.{i}")
        for i, s in enumerate(d.sources)
    ], validation_fraction=d.validation_fraction, seed=d.seed, shuffle=d.shuffle)  # fmt: skip
    return mix.train, mix.builder, mix.validation, mix.validation_builder


def token_data(cfg: Any, tokenizer: Any, dp: Any, device: torch.device) -> TokenData:
    """Build the samples of ``cfg.data`` (instruction, chat or text; one source or a weighted
    mixture) and the training loader."""
    t, d = cfg.training, cfg.data
    train_ds, builder, val_ds, val_builder = _split(cfg, tokenizer)
    args: dict[str, Any] = {
        "batch_size": t.micro_batch_size, "max_seq_len": d.max_seq_len, "packing": d.packing,
        "truncation": d.truncation, "seed": d.seed, "rank": dp.rank, "world_size": dp.size,
    }  # fmt: skip
    pipelined = cfg.distributed.pp_size > 1 and d.padding_free is None  # stages: fixed shapes
    padding_free = False if pipelined else resolve_padding_free(
        d.padding_free, device=device, packing=d.packing, compile=t.compile,
        tp_size=cfg.distributed.tp_size,
    )  # fmt: skip
    return TokenData(
        loader=make_loader(train_ds, builder, shuffle=d.shuffle, endless=True, **args),
        total_steps=t.max_steps or t.epochs * (len(train_ds) // t.global_batch_size),
        has_validation=val_ds is not None, _val=val_ds, _builder=val_builder, _args=args,
        _padding_free=padding_free, _device=device,
        _max_eval_batches=per_rank_batches(cfg.eval.max_batches, dp.size),
    )  # fmt: skip
