"""A training loop's micro-batches through pipeline stages: fixed-shape batches, a step, and a
forward-only validation loss (``PipelineBatches``, around ``PipelinedModel``).

    batches = PipelineBatches(pipe, length=max_seq_len, rows=accumulation * micro_batch_size,
                              reduce=dp.reduce, device=device)
    metrics = batches.step(micro_batches)      # {"loss", "num_tokens"} on every rank
    val = batches.validation_loss(held_out, per_step=accumulation, max_batches=None)

Rows are padded to ``length`` (``padded_batch``: ignored labels, continued positions, a document
of their own), so any right-padded, packed or padding-free batch of tune's key convention works;
the loss is normalised by the step's trained tokens over every data-parallel rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tune.dist.context_batches import padded_batch
from tune.dist.pipeline_training import PipelinedModel

Batch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


@dataclass
class PipelineBatches:
    """A ``PipelinedModel`` fed a training loop's micro-batches: each step's micro-batches become
    one batch of fixed shape [rows, length] (stages exchange fixed-shape activations).

    Args:
        pipe: this rank's stages and schedule (``pipe.module``: its parameters, model names).
        length: tokens per row (e.g. the data's maximum sequence length).
        rows: rows per step (gradient accumulation × micro-batch size).
        reduce: sums over data-parallel ranks.
        device: where batches go.
    """

    pipe: PipelinedModel
    length: int
    rows: int
    reduce: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device

    def batch(self, micro_batches: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        """Tokens, labels and model keyword inputs [rows, length] of a step's micro-batches (a
        short held-out group is filled with rows that train nothing)."""
        parts = [padded_batch({k: v.to(self.device) for k, v in mb.items()}, self.length)
                 for mb in micro_batches]  # fmt: skip
        tokens, labels, positions = (torch.cat([p[0][k] for p in parts])
                                     for k in ("tokens", "labels", "positions"))  # fmt: skip
        documents = [p[1] if p[1] is not None else torch.zeros_like(p[0]["tokens"]) for p in parts]
        missing = self.rows - tokens.shape[0]
        if missing > 0:
            tokens = torch.cat([tokens, tokens.new_zeros(missing, self.length)])
            labels = torch.cat([labels, labels.new_full((missing, self.length), -100)])
            positions = torch.cat([positions, positions[:1].expand(missing, -1)])
            documents.append(tokens.new_zeros(missing, self.length))
        kwargs = {"positions": positions}
        if any(p[1] is not None for p in parts):
            kwargs["document_ids"] = torch.cat(documents)
        return tokens, labels, kwargs

    def step(self, micro_batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
        """Forward and backward of the step; ``{"loss", "num_tokens"}`` on every rank."""
        tokens, labels, kwargs = self.batch(micro_batches)
        count = self.reduce((labels != -100).sum())
        loss = self.pipe.step(tokens, labels, num_tokens=count, **kwargs)
        return {"loss": float(loss), "num_tokens": int(count)}

    def validation_loss(
        self, batches: Iterable[Mapping[str, torch.Tensor]], per_step: int, max_batches: int | None
    ) -> float:
        """Token-mean loss over held-out batches, ``per_step`` at a time (every rank)."""
        self.pipe.module.eval()
        total = count = 0.0
        group: list[Mapping[str, torch.Tensor]] = []
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            group.append(batch)
            if len(group) == per_step:
                total, count = self._add(group, total, count)
                group = []
        if group:
            total, count = self._add(group, total, count)
        self.pipe.module.train()
        return total / max(count, 1.0)

    def _add(self, group: Sequence[Mapping[str, torch.Tensor]], total: float,
             count: float) -> tuple[float, float]:  # fmt: skip
        tokens, labels, kwargs = self.batch(group)
        counted = float(self.reduce((labels != -100).sum()))
        return total + self.pipe.loss_sum(tokens, labels, **kwargs), count + counted
