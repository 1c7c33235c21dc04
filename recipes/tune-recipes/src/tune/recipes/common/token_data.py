"""The token-level data of the sft and distill recipes: rows -> samples -> (padding-free) batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tune.data import (
    build_sample_builder,
    make_loader,
    padding_free_batch,
    padding_free_batches,
    per_rank_batches,
    resolve_padding_free,
    split_source,
)
from tune.train import count_nonpadding_tokens


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
        """``count`` micro-batches on the device and their non-padding token count."""
        if self._batches is None:
            self._batches = iter(self.loader)
        mbs = [
            padding_free_batch({k: v.to(self._device) for k, v in next(self._batches).items()},
                               self._padding_free)
            for _ in range(count)
        ]  # fmt: skip
        tokens = sum(count_nonpadding_tokens(mb["tokens"], mb.get("attention_mask")) for mb in mbs)
        return mbs, tokens

    def validation_batches(self) -> Any:
        """One pass over this rank's held-out batches (``eval.max_batches`` of them at most)."""
        loader = make_loader(self._val, self._builder, shuffle=False, endless=False, **self._args)
        return padding_free_batches(loader, self._padding_free)

    @property
    def max_eval_batches(self) -> int | None:
        """``eval.max_batches`` split over the data-parallel ranks."""
        return self._max_eval_batches


def token_data(cfg: Any, tokenizer: Any, dp: Any, device: torch.device) -> TokenData:
    """Build the samples of ``cfg.data`` (instruction, chat or text) and the training loader."""
    t, d = cfg.training, cfg.data
    builder = build_sample_builder(
        tokenizer, d.format, column_map=d.column_map, chat_template=cfg.tokenizer.chat_template,
        train_on_input=d.train_on_input,
    )  # fmt: skip
    train_ds, val_ds = split_source(
        d.source, d.split, d.validation_split, d.validation_fraction, d.seed,
        validate=builder.validate,
    )  # fmt: skip
    args: dict[str, Any] = {
        "batch_size": t.micro_batch_size, "max_seq_len": d.max_seq_len, "packing": d.packing,
        "truncation": d.truncation, "seed": d.seed, "rank": dp.rank, "world_size": dp.size,
    }  # fmt: skip
    padding_free = resolve_padding_free(
        d.padding_free, device=device, packing=d.packing, compile=t.compile,
        tp_size=cfg.distributed.tp_size,
    )  # fmt: skip
    return TokenData(
        loader=make_loader(train_ds, builder, shuffle=d.shuffle, endless=True, **args),
        total_steps=t.max_steps or t.epochs * (len(train_ds) // t.global_batch_size),
        has_validation=val_ds is not None, _val=val_ds, _builder=builder, _args=args,
        _padding_free=padding_free, _device=device,
        _max_eval_batches=per_rank_batches(cfg.eval.max_batches, dp.size),
    )  # fmt: skip
