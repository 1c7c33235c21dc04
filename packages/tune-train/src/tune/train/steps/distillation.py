"""The distillation loss of one micro-batch (CE mixed with a KL to a frozen teacher) and its eval."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tune.train.losses import (
    TokenLoss,
    cross_entropy,
    kl_distillation_loss,
)


@dataclass(frozen=True)
class DistillLossSettings:
    """How the two losses are computed and mixed.

    Args:
        kind: ``forward``, ``reverse`` or ``symmetric`` KL.
        temperature: softmax temperature of both distributions.
        symmetric_mix: weight of the forward KL for ``symmetric``.
        ce_weight: weight of the label cross-entropy; the KL gets ``1 - ce_weight``.
        chunk_size: tokens per KL chunk (None: all at once).
        vocab_size: logits compared over the first ``vocab_size`` entries (student and teacher
            checkpoints may pad their vocabularies differently); None: all.
    """

    kind: str = "forward"
    temperature: float = 1.0
    symmetric_mix: float = 0.5
    ce_weight: float = 0.5
    chunk_size: int | None = None
    vocab_size: int | None = None


@dataclass(frozen=True)
class DistillLoss:
    """One micro-batch's losses, each summed over its trained tokens.

    Args:
        total: the mixed loss to back-propagate and its token count.
        ce_sum: 0-d summed cross-entropy (detached).
        kl_sum: 0-d summed KL (detached).
    """

    total: TokenLoss
    ce_sum: torch.Tensor
    kl_sum: torch.Tensor


def _model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("positions", "document_ids", "attention_mask") if k in batch}


def teacher_logits(teacher: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The frozen teacher's logits [B, T, V_t] (no autograd graph)."""
    with torch.no_grad():
        return teacher(batch["tokens"], **_model_inputs(batch)).float()


def distill_micro_batch_loss(
    student: nn.Module,
    teacher: nn.Module,
    batch: Mapping[str, torch.Tensor],
    settings: DistillLossSettings,
) -> DistillLoss:
    """``ce_weight * CE + (1 - ce_weight) * KL`` summed over the batch's labelled tokens.

    Args:
        student: the trained model (``forward(tokens, *, positions, document_ids,
            attention_mask)`` -> logits [B, T, V_s]).
        teacher: the frozen model, same call convention, over the same tokenizer.
        batch: ``tokens`` [B, T], aligned ``labels`` [B, T] (-100 ignored), optional
            ``positions`` / ``document_ids`` / ``attention_mask``.
        settings: loss kind, temperature, mix, weights, chunking and compared vocabulary.
    """
    labels = batch["labels"]
    target = teacher_logits(teacher, batch)  # [B, T, V_t]
    logits = student(batch["tokens"], **_model_inputs(batch))  # [B, T, V_s]
    v = settings.vocab_size
    student_v = logits if v is None else logits[..., :v]
    teacher_v = target if v is None else target[..., :v]
    ce = cross_entropy(logits, labels)
    kl = kl_distillation_loss(
        student_v.float(),
        teacher_v,
        labels,
        kind=settings.kind,  # type: ignore[arg-type]
        temperature=settings.temperature,
        mix=settings.symmetric_mix,
        chunk_size=settings.chunk_size,
    )
    w = settings.ce_weight
    total = TokenLoss(w * ce.loss_sum + (1.0 - w) * kl.loss_sum, ce.num_tokens)
    return DistillLoss(total, ce.loss_sum.detach(), kl.loss_sum.detach())


@torch.no_grad()
def evaluate_distillation(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    settings: DistillLossSettings,
    *,
    max_batches: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Token-mean CE and KL of the student over ``batches`` (summed over ranks with ``reduce``).

    Returns:
        ``{"val_loss": CE, "val_kl": KL, "val_distill_loss": the mixed loss}``.
    """
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # ce, kl, tokens
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = distill_micro_batch_loss(student, teacher, batch, settings)
        sums += torch.stack([loss.ce_sum, loss.kl_sum, loss.total.num_tokens.float()]).double()
    if reduce is not None:
        sums = reduce(sums)
    student.train(was_training)
    ce, kl = (sums[:2] / sums[2].clamp(min=1)).tolist()
    w = settings.ce_weight
    return {"val_loss": ce, "val_kl": kl, "val_distill_loss": w * ce + (1.0 - w) * kl}
