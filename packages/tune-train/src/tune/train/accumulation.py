"""Gradient accumulation normalised by the trained tokens of the whole optimizer step.

The loss of a step is `sum of per-token losses over all micro-batches and ranks / number of
trained tokens over all micro-batches and ranks`. Normalising each micro-batch by its own token
count (the 2024 gradient-accumulation bug) weights tokens of short micro-batches more; here the
count of the whole step is taken first, then every micro-batch's *summed* loss is scaled by
`grad_average_world_size / global_count` before `backward()`.

Why `grad_average_world_size`: DDP and FSDP average gradients over the data-parallel ranks
(divide the sum by the world size). To end with the gradient of the global token mean, each rank
multiplies its loss by the world size, cancelling that division. When gradients are summed
instead (a manual `all_reduce(SUM)`) or there is one process, the factor is 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from tune.train.losses.cross_entropy import IGNORE_INDEX, TokenLoss

logger = logging.getLogger(__name__)

AllReduce = Callable[[Tensor], Tensor]


def count_trained_tokens(labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Number of positions that contribute to the loss (label != ignore_index).

    Args:
        labels: [...] int64 labels.
        ignore_index: label value that is not trained.

    Returns:
        0-d int64 tensor on the labels' device.
    """
    return (labels != ignore_index).sum()


def distributed_sum(group: Any = None) -> AllReduce:
    """An `all_reduce` callable summing a tensor over a `torch.distributed` process group.

    Args:
        group: the process group (None: the default group).
    """

    def reduce(tensor: Tensor) -> Tensor:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    return reduce


def _local_total(counts: Iterable[Tensor | int], device: torch.device | str | None) -> Tensor:
    total: Tensor | None = None
    for count in counts:
        c = torch.as_tensor(count, dtype=torch.int64)
        total = c if total is None else total + c.to(total.device)
    if total is None:
        raise ValueError("num_tokens is empty: pass one count per micro-batch of the step")
    return total if device is None else total.to(device)


def loss_scale_for_step(
    num_tokens: Iterable[Tensor | int],
    all_reduce: AllReduce | None = None,
    *,
    grad_average_world_size: int = 1,
    device: torch.device | str | None = None,
) -> Tensor:
    """Factor by which to multiply each micro-batch's summed loss before `backward()`.

    Args:
        num_tokens: trained-token counts (0-d tensors or ints) of ALL this rank's micro-batches
            of the optimizer step, counted before the first backward.
        all_reduce: sums a tensor over data-parallel ranks (e.g. `distributed_sum()`); None for
            one process.
        grad_average_world_size: the number of ranks the data-parallel wrapper averages
            gradients over (DDP/FSDP: the data-parallel world size); 1 if gradients are summed.
        device: where the count is reduced (the process group's device, e.g. CUDA for NCCL);
            None keeps the counts' device.

    Returns:
        0-d float32 tensor `grad_average_world_size / max(global_count, 1)`.
    """
    if grad_average_world_size < 1:
        raise ValueError(f"grad_average_world_size must be >= 1, got {grad_average_world_size}")
    total = _local_total(num_tokens, device)
    if all_reduce is not None:
        total = all_reduce(total)
    return grad_average_world_size / total.clamp(min=1).to(torch.float32)


class GradientAccumulator:
    """Scales micro-batch losses by the global trained-token count of the optimizer step.

    Use:

        acc.start_step([count_trained_tokens(mb["labels"]) for mb in micro_batches])
        for mb in micro_batches:
            acc.scale(fused_linear_cross_entropy(h, w, mb["labels"])).backward()
        metrics = acc.finish_step()   # {"loss": global token-mean loss, "num_tokens": ...}

    The unit can be anything summed by the loss: tokens for cross-entropy, pairs for DPO
    (`count = batch size`), tokens or sequences for `policy_gradient_loss`.

    Args:
        all_reduce: sums a tensor over data-parallel ranks; None for one process.
        grad_average_world_size: ranks the data-parallel wrapper averages gradients over
            (DDP/FSDP: the data-parallel world size); 1 when gradients are summed.
        device: where counts and losses are reduced (the process group's device, e.g. CUDA
            for NCCL); None keeps the counts' device.
    """

    def __init__(
        self,
        all_reduce: AllReduce | None = None,
        *,
        grad_average_world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if grad_average_world_size < 1:
            raise ValueError(f"grad_average_world_size must be >= 1, got {grad_average_world_size}")
        self.all_reduce = all_reduce
        self.grad_average_world_size = grad_average_world_size
        self.device = device
        self._scale: Tensor | None = None
        self._local_count: Tensor | None = None
        self._global_count: Tensor | None = None
        self._loss_sum: Tensor | None = None
        self._seen_count: Tensor | None = None

    def start_step(self, num_tokens: Iterable[Tensor | int]) -> Tensor:
        """Record the counts of all this rank's micro-batches of the step; returns the global count.

        Args:
            num_tokens: one trained-unit count per micro-batch (0-d tensors or ints).
        """
        local = _local_total(num_tokens, self.device)
        global_count = self.all_reduce(local.clone()) if self.all_reduce is not None else local
        self._local_count = local
        self._global_count = global_count
        self._scale = self.grad_average_world_size / global_count.clamp(min=1).to(torch.float32)
        self._loss_sum = None
        self._seen_count = None
        return global_count

    @property
    def loss_scale(self) -> Tensor:
        """The current step's factor (see `loss_scale_for_step`)."""
        if self._scale is None:
            raise RuntimeError("call start_step(counts) before scaling losses")
        return self._scale

    def scale(self, loss: TokenLoss | Tensor) -> Tensor:
        """Return the micro-batch's summed loss times the step's scale, ready for `backward()`.

        Args:
            loss: a `TokenLoss` (its count is checked against `start_step`'s at `finish_step`)
                or a 0-d summed loss.
        """
        scale = self.loss_scale
        if isinstance(loss, tuple):
            loss_sum, count = loss[0], loss[1]
            seen = count.detach().to(torch.int64)
            self._seen_count = seen if self._seen_count is None else self._seen_count + seen
        else:
            loss_sum = loss
        if loss_sum.dim() != 0:
            raise ValueError(
                f"expected a summed 0-d loss, got shape {tuple(loss_sum.shape)}: "
                "losses here are sums; reduce with .sum(), never .mean()"
            )
        detached = loss_sum.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        return loss_sum * scale.to(loss_sum.device)

    def finish_step(self) -> dict[str, float]:
        """Global token-mean loss of the step and the global count; checks the counts agreed.

        Returns:
            `{"loss": float, "num_tokens": int}`.

        Raises:
            ValueError: the `TokenLoss` counts seen by `scale` differ from `start_step`'s.
        """
        if self._global_count is None or self._local_count is None:
            raise RuntimeError("call start_step(counts) before finish_step()")
        if self._seen_count is not None and int(self._seen_count) != int(self._local_count):
            raise ValueError(
                f"start_step was told {int(self._local_count)} trained tokens on this rank but "
                f"the scaled losses counted {int(self._seen_count)}: count every micro-batch "
                "of the step before the first backward, with the same ignore_index"
            )
        zero = torch.zeros((), device=self._global_count.device)
        loss_sum = self._loss_sum if self._loss_sum is not None else zero
        loss_sum = loss_sum.to(device=self._global_count.device, dtype=torch.float64)
        if self.all_reduce is not None:
            loss_sum = self.all_reduce(loss_sum.clone())
        global_count = int(self._global_count)
        metrics = {"loss": float(loss_sum) / max(global_count, 1), "num_tokens": global_count}
        self._scale = None
        return metrics
