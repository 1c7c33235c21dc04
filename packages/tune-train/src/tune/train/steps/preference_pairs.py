"""Paired preference losses on interleaved rows (``c0, r0, c1, r1, ...``), for loops that split
a batch by rows and must keep each pair together (pipeline micro-batches).

The loss target carries each row's labels and reference log-prob: ``target = [labels | ref]``
[rows, T + 1] in float64 (token ids stay exact). ``PairedObjective`` is the per-micro-batch loss
summed over real pairs (rows whose labels are all ignored are filler) and collects the step's
statistics (``STAT_KEYS`` sums, as ``preference_stats``) in ``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tune.train.losses import sequence_logprobs
from tune.train.steps.preference import STAT_KEYS, PreferenceObjective, preference_stats


def interleave_pairs(x: Tensor) -> Tensor:
    """[2B, ...] chosen rows then rejected rows -> ``c0, r0, c1, r1, ...``."""
    half = x.shape[0] // 2
    return torch.stack([x[:half], x[half:]], dim=1).flatten(0, 1)


@dataclass
class PairedObjective:
    """The objective on interleaved rows: the pipeline's per-micro-batch loss (summed over real
    pairs) and the statistics it collects on the last stage."""

    objective: PreferenceObjective
    stats: list[Tensor] = field(default_factory=list)

    def _result(self, logits: Tensor, target: Tensor) -> tuple[Any, Tensor]:
        length = target.shape[1] - 1
        labels, reference = target[:, :length].long(), target[:, length].float()
        logps = sequence_logprobs(logits, labels, average=self.objective.average)
        policy = torch.cat([logps[0::2], logps[1::2]])  # chosen first, as the objective reads
        ref = torch.cat([reference[0::2], reference[1::2]])
        result = self.objective.loss(policy, ref if self.objective.needs_reference else None)
        real = (labels[0::2] != -100).any(dim=1)  # filler pairs of a short held-out group
        return result, real

    def __call__(self, logits: Tensor, target: Tensor) -> Tensor:
        result, real = self._result(logits, target)
        self.stats.append(self._stats(result, real))
        return (result.losses * real).sum()

    def _stats(self, result: Any, real: Tensor) -> Tensor:
        kept = type(result)(*(v[real] for v in result))
        values = preference_stats(kept)
        return torch.stack([values[k] for k in STAT_KEYS]).detach()

    def evaluate(self, logits: Tensor, target: Tensor) -> Tensor:
        """Forward-only: the micro-batch's statistics (``STAT_KEYS`` sums)."""
        result, real = self._result(logits, target)
        return self._stats(result, real)
