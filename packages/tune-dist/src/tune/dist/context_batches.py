"""A training batch cut for context parallelism: padded to ``2 * cp`` chunks, this rank's zig-zag
share of every per-token tensor, and the global document ids the ring attention masks with.

Batch keys follow tune's convention (tune.data's collators): ``tokens`` and ``labels`` [B, T]
always; ``positions`` (RoPE positions, restarting per packed document), ``document_ids`` (packed
or padding-free rows) and ``attention_mask`` (right-padded rows, 1 = real token) when present.
Anything else is passed through untouched. ``context_split`` is the same for a training loop:
groups of ``cp_size`` consecutive data-parallel ranks read the same batches (``split.data`` is the
layout the loader reads with) and ``split.shard(batch)`` / ``split.installed(model)`` run them::

    local, documents = context_parallel_batch(batch, cp_size, cp_rank)
    with context_parallel_attention(model, cp_group, document_ids=documents):
        loss = loss_fn(model(local["tokens"], positions=local["positions"]), local["labels"])

Each rank's trained-token count is that of its own shard, so summing counts and gradients over
all data-parallel ranks (every rank of every CP group) gives the one-process result.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tune.dist.context_parallel import RingAttentionFn, context_parallel_attention, zigzag_shard
from tune.dist.data_parallel import DataParallel
from tune.dist.mesh import build_context_mesh, context_data_rank_and_size

PER_TOKEN_KEYS = ("tokens", "labels", "positions")


def _right_padded(mask: torch.Tensor) -> bool:
    # every row is ones then zeros: non-increasing along T
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def padded_batch(
    batch: Mapping[str, Any],
    length: int,
    *,
    pad_token: int = 0,
    ignore_index: int = -100,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``tokens``, ``labels`` and ``positions`` [B, length], padded at the end, and the padded
    ``document_ids`` (None without them).

    The padding gets token ``pad_token``, label ``ignore_index``, positions continuing from each
    row's last, and a document of its own. A right-padded ``attention_mask`` is dropped: with
    causal attention no real token sees the padding after it, whose labels are ignored.

    Args:
        batch: ``tokens`` and ``labels`` [B, T] (T <= length), optional ``positions``,
            ``document_ids``, ``attention_mask`` [B, T].
        length: the padded length.
        pad_token: token id of the added padding.
        ignore_index: label of the added padding.
    """
    missing = [k for k in ("tokens", "labels") if k not in batch]
    if missing:
        raise KeyError(f"the batch has no {missing} (keys {sorted(batch)})")
    tokens = batch["tokens"]
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, T], got {tuple(tokens.shape)}")
    B, T = tokens.shape
    if T > length:
        raise ValueError(f"the batch holds {T} tokens per row, more than the length {length}")
    mask = batch.get("attention_mask")
    if mask is not None and not _right_padded(mask):
        raise ValueError(
            "attention_mask must be right padding (ones, then zeros, per row); left-padded or "
            "holed rows cannot be cut along the sequence"
        )
    pad = length - T
    positions = batch.get("positions")
    if positions is None:
        positions = torch.arange(T, device=tokens.device).expand(B, T)
    documents = batch.get("document_ids")

    def extend(x: torch.Tensor, fill: torch.Tensor | int) -> torch.Tensor:
        if not pad:
            return x
        tail = fill if isinstance(fill, torch.Tensor) else x.new_full((B, pad), fill)
        return torch.cat([x, tail], dim=1)

    steps = torch.arange(1, pad + 1, device=tokens.device)
    full = {
        "tokens": extend(tokens, pad_token),
        "labels": extend(batch["labels"], ignore_index),
        "positions": extend(positions, positions[:, -1:] + steps),
    }
    if documents is not None:
        documents = extend(documents, int(documents.max().item()) + 1)
    return full, documents


def context_parallel_batch(
    batch: Mapping[str, Any],
    cp_size: int,
    rank: int,
    *,
    pad_token: int = 0,
    ignore_index: int = -100,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """This rank's zig-zag share of ``batch`` and the batch's global document ids.

    The sequence is first padded at the end to a multiple of ``2 * cp_size`` (``padded_batch``),
    so any length works; a right-padded ``attention_mask`` is dropped.

    Args:
        batch: ``tokens`` and ``labels`` [B, T], optional ``positions``, ``document_ids``,
            ``attention_mask`` [B, T].
        cp_size: ranks in the context-parallel group.
        rank: this rank's index in it.
        pad_token: token id of the added padding.
        ignore_index: label of the added padding.

    Returns:
        ``(local, document_ids)``: ``local`` holds ``tokens``, ``labels`` and ``positions``
        [B, T_pad / cp_size] (and the batch's other keys, unchanged); ``document_ids`` is the
        padded global [B, T_pad] (None for one causal sequence per row), for
        ``context_parallel_attention``.
    """
    T = batch["tokens"].shape[-1] if "tokens" in batch else 0
    full, documents = padded_batch(batch, T + (-T % (2 * cp_size)), pad_token=pad_token,
                                   ignore_index=ignore_index)  # fmt: skip
    local = {k: v for k, v in batch.items() if k not in (*PER_TOKEN_KEYS, "document_ids",
                                                         "attention_mask")}  # fmt: skip
    local.update({k: zigzag_shard(v, cp_size, rank) for k, v in full.items()})
    return local, documents


DOCUMENTS = "cp_document_ids"  # a sharded micro-batch's global document ids (not a model input)


@dataclass
class ContextSplit:
    """This rank's place in its context-parallel group.

    Args:
        group: the group's process group.
        rank: this rank's index in it.
        size: the context-parallel degree.
        data: the data-parallel layout the loader reads with (rank and size over the groups).
        pad_token: token id of the padding added to reach a multiple of ``2 * size``.
    """

    group: Any
    rank: int
    size: int
    data: DataParallel
    pad_token: int = 0
    _attention: RingAttentionFn | None = None

    def shard(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """This rank's zig-zag share of ``batch`` (global document ids kept aside)."""
        local, documents = context_parallel_batch(batch, self.size, self.rank,
                                                  pad_token=self.pad_token)  # fmt: skip
        if documents is not None:
            local[DOCUMENTS] = documents
        return local

    def attend(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """Point the ring attention at ``batch``'s documents; call before its forward."""
        if self._attention is not None:
            self._attention.document_ids = batch.get(DOCUMENTS)
        return batch

    def validation(
        self, batches: Iterable[Mapping[str, torch.Tensor]], device: torch.device
    ) -> Iterator[Any]:
        """Sharded held-out batches on ``device``, the attention pointed at each as it is
        consumed."""
        for batch in batches:
            yield self.attend(self.shard({k: v.to(device) for k, v in batch.items()}))

    @contextlib.contextmanager
    def installed(self, model: nn.Module) -> Iterator[None]:
        """Ring attention in every attention module of ``model`` for the block (forward,
        recomputation under activation checkpointing, and backward)."""
        with context_parallel_attention(model, self.group) as fn:
            self._attention = fn
            try:
                yield
            finally:
                self._attention = None


def context_split(dp: DataParallel, cp_size: int, *, pad_token: int = 0) -> ContextSplit | None:
    """The context-parallel group of this rank (collective), or None for ``cp_size`` 1 or one
    process."""
    if cp_size == 1 or not dp.distributed or dp.mesh is None:
        return None
    mesh = build_context_mesh(dp.mesh, cp_size)
    rank, size = context_data_rank_and_size(dp.mesh, cp_size)
    data = dataclasses.replace(dp, rank=rank, size=size)
    return ContextSplit(mesh["cp"].get_group(), mesh["cp"].get_local_rank(), cp_size, data,
                        pad_token)  # fmt: skip
