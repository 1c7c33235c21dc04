"""``distributed.cp_size``: a token recipe's batches split over a context-parallel group.

Groups of ``cp_size`` consecutive data-parallel ranks read the same batches (the loader sees
``dp_size / cp_size`` shards); each rank trains its zig-zag share of every sequence
(``tune.dist.context_parallel_batch``) with the model's attention routed through the ring
(``tune.dist.context_parallel_attention``). Trained-token counts and gradients are summed over all
data-parallel ranks as without CP, which gives the one-process result.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tune.dist import (
    DataParallel,
    RingAttentionFn,
    build_context_mesh,
    context_data_rank_and_size,
    context_parallel_attention,
    context_parallel_batch,
)

DOCUMENTS = "cp_document_ids"  # a sharded micro-batch's global document ids (not a model input)


@dataclass
class ContextSplit:
    """This rank's place in its context-parallel group.

    Args:
        group: the group's process group.
        rank: this rank's index in it.
        size: ``distributed.cp_size``.
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


def reject_routed_experts(model: nn.Module, has_experts: bool, key: str) -> None:
    """Refuse a mixture-of-experts model under CP or PP (router losses and expert-load metrics
    read every layer's routing of whole batches)."""
    if has_experts:
        raise ValueError(
            f"distributed.{key} > 1: mixture-of-experts models cannot use it yet "
            f"({type(model).__name__} has routed experts); use {key}=1 (ep_size splits experts)"
        )
