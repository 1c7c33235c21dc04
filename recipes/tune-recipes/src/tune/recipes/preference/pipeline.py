"""``distributed.pp_size`` in the preference recipe: paired losses through pipeline stages.

A micro-batch holds 2B rows, chosen first; the pipeline splits rows into its micro-batches, so the
rows are interleaved (``c0, r0, c1, r1, ...``) to keep each pair in one. The reference log-probs
(the policy with its adapters disabled) come from a forward-only pass through the same stages and
ride to the last stage in the loss target: ``target = [labels | reference log-prob]`` (float64, so
token ids stay exact). The last stage computes the objective's per-pair losses and the step's
statistics; every rank receives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tune.dist import PipelineBatches
from tune.peft import disable_adapters
from tune.train.losses import sequence_logprobs
from tune.train.steps.preference import STAT_KEYS, summarize_stats
from tune.train.steps.preference_pairs import PairedObjective, interleave_pairs


@dataclass
class PreferencePipeline:
    """Steps and evaluation of the preference recipe on pipeline stages."""

    run: PipelineBatches
    paired: PairedObjective
    adapters: bool

    def _inputs(self, micro_batches: Sequence[Mapping[str, Tensor]]) -> Any:
        rows = [{k: interleave_pairs(v) for k, v in mb.items() if v.dim() >= 1} for mb in
                micro_batches]  # fmt: skip
        tokens, labels, kwargs = self.run.batch(rows)
        pipe = self.run.pipe
        reference = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
        if self.paired.objective.needs_reference:
            average = self.paired.objective.average
            with disable_adapters(pipe.module) if self.adapters else nullcontext():
                ref = pipe.forward_outputs(
                    tokens, labels,
                    lambda logits, target: sequence_logprobs(logits, target, average=average),
                    **kwargs,
                )  # fmt: skip
            if ref is not None:
                reference = ref.double()
        target = torch.cat([labels.double(), reference[:, None]], dim=1)
        return tokens, target, kwargs

    def _gather(self, stats: list[Tensor]) -> dict[str, float]:
        local = torch.stack(stats).sum(0) if stats else torch.zeros(len(STAT_KEYS))
        total = self.run.pipe.from_last_stage(local.double().cpu())
        return summarize_stats(dict(zip(STAT_KEYS, total, strict=True)))

    def step(self, micro_batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Any]:
        """Forward and backward of the step; the step's statistics on every rank."""
        tokens, target, kwargs = self._inputs(micro_batches)
        pairs = self.run.reduce(torch.tensor(tokens.shape[0] // 2, device=tokens.device))
        self.paired.stats.clear()
        loss = self.run.pipe.step(tokens, target, num_tokens=pairs, **kwargs)
        # The schedule's first step (and the first after a forward-only pass) also calls the loss
        # once to infer gradient shapes, before the real micro-batches: keep those only.
        metrics = self._gather(self.paired.stats[-self.run.pipe.n_microbatches :])
        return {**metrics, "loss": float(loss), "num_pairs": int(pairs)}

    def evaluate(
        self, batches: Iterable[Mapping[str, Tensor]], per_step: int, max_batches: int | None
    ) -> dict[str, float]:
        """Held-out statistics, ``per_step`` micro-batches at a time, prefixed ``val_``."""
        module = self.run.pipe.module
        module.eval()
        stats: list[Tensor] = []
        group: list[Mapping[str, Tensor]] = []
        batches = list(batches)[:max_batches] if max_batches is not None else list(batches)
        for i, batch in enumerate(batches):
            group.append(batch)
            if len(group) == per_step or i == len(batches) - 1:
                tokens, target, kwargs = self._inputs(group)
                out = self.run.pipe.forward_outputs(tokens, target, self.paired.evaluate, **kwargs)
                if out is not None:
                    stats.append(out.reshape(-1, len(STAT_KEYS)).sum(0))
                group = []
        module.train()
        return {f"val_{k}": v for k, v in self._gather(stats).items()}
