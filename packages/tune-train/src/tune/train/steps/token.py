"""The loss of one micro-batch and the validation loss, shared by the token-level recipes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import cast

import torch
from torch import nn

from tune.train.losses import (
    TokenLoss,
    cross_entropy,
    fused_linear_cross_entropy,
)
from tune.train.steps.router import RouterObjective, real_token_mask


def _model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("positions", "document_ids", "attention_mask") if k in batch}


def micro_batch_loss(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    fused: bool,
    softcap: float | None = None,
    router: RouterObjective | None = None,
) -> TokenLoss:
    """Summed token cross-entropy of a batch and its count of trained tokens.

    Args:
        model: a tune model (``forward(tokens, *, positions, document_ids, attention_mask,
            return_hidden)``).
        batch: ``tokens`` [B, T], aligned ``labels`` [B, T] (-100 ignored), and optionally
            ``positions``, ``document_ids`` (packed) or ``attention_mask`` (padded).
        fused: apply the output projection inside a chunked CE (never builds [B*T, V] logits).
        softcap: final-logit soft-capping (Gemma 2), applied inside the loss.
        router: a MoE model's router losses and load metrics (``RouterObjective``): its penalty
            times the trained tokens is added to the summed loss (see ``tune.train.steps.router``).
    """
    labels = batch["labels"]
    if fused:
        hidden = model(batch["tokens"], **_model_inputs(batch), return_hidden=True)  # [B, T, D]
        weight = cast(nn.Linear, model.get_submodule("output")).weight  # [V, D]
        loss = fused_linear_cross_entropy(
            hidden.flatten(0, 1), weight, labels.flatten(), softcap=softcap
        )
    else:
        logits = model(batch["tokens"], **_model_inputs(batch))  # [B, T, V], already soft-capped
        loss = cross_entropy(logits, labels)
    if router is not None:
        penalty = router.penalty(
            model, units=loss.num_tokens, batch_size=batch["tokens"].shape[0],
            attention_mask=real_token_mask(batch),
        )  # fmt: skip
        if penalty is not None:
            loss = TokenLoss(loss.loss_sum + penalty * loss.num_tokens, loss.num_tokens)
    return loss


@torch.no_grad()
def evaluate_token_loss(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    fused: bool,
    softcap: float | None = None,
    max_batches: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Token-mean cross-entropy over ``batches`` (summed over ranks with ``reduce``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = micro_batch_loss(model, batch, fused=fused, softcap=softcap)
        total += loss.loss_sum.double()
        count += loss.num_tokens.double()
    if reduce is not None:
        total, count = reduce(total), reduce(count)
    model.train(was_training)
    return float(total / count.clamp(min=1))
