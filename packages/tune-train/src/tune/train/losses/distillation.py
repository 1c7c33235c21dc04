"""Knowledge-distillation losses: forward, reverse and mixed KL between teacher and student, per token."""

from __future__ import annotations

from typing import Literal

import torch
import torch.utils.checkpoint
from torch import Tensor

from tune.train.losses.cross_entropy import IGNORE_INDEX, TokenLoss

KLKind = Literal["forward", "reverse", "symmetric"]


def _token_kl(
    student_logits: Tensor, teacher_logits: Tensor, kind: str, temperature: float, mix: float
) -> Tensor:
    """Per-token divergence [N] (float32) of the temperature-scaled distributions."""
    log_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    log_t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (N, V)
    diff = log_t - log_s
    if kind == "forward":  # KL(teacher || student)
        return (log_t.exp() * diff).sum(-1)
    if kind == "reverse":  # KL(student || teacher)
        return -(log_s.exp() * diff).sum(-1)
    forward = (log_t.exp() * diff).sum(-1)
    reverse = -(log_s.exp() * diff).sum(-1)
    return mix * forward + (1.0 - mix) * reverse


def kl_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    kind: KLKind = "forward",
    temperature: float = 1.0,
    mix: float = 0.5,
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> TokenLoss:
    """Summed per-token KL between teacher and student over positions with a real label.

    - `forward`: KL(p_teacher || p_student) (mean-seeking, the classic KD loss);
    - `reverse`: KL(p_student || p_teacher) (mode-seeking);
    - `symmetric`: `mix * forward + (1 - mix) * reverse` (Jeffreys divergence / 2 at mix 0.5).

    Logits are divided by `temperature` and the loss multiplied by `temperature²` (Hinton et al.),
    so gradient magnitudes do not shrink as the temperature grows. The teacher gets no gradient.

    Args:
        student_logits: [..., V] student logits.
        teacher_logits: [..., V] teacher logits over the same vocabulary.
        labels: [...] int64; positions equal to `ignore_index` are excluded (prompt, padding).
        kind: which divergence.
        temperature: softmax temperature (> 0).
        mix: weight of the forward KL when `kind="symmetric"`.
        chunk_size: tokens per chunk; chunks are recomputed in backward, bounding the float32
            temporaries to one chunk. None computes everything at once.
        ignore_index: label value that excludes a position.

    Returns:
        `TokenLoss(loss_sum, num_tokens)`.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape [..., V]"
        )
    if student_logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(student_logits.shape)} and labels {tuple(labels.shape)} disagree: "
            "expected logits [..., V] and labels [...]"
        )
    if kind not in ("forward", "reverse", "symmetric"):
        raise ValueError(f"kind must be 'forward', 'reverse' or 'symmetric', got {kind!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.reshape(-1, vocab).detach()
    valid = labels.reshape(-1) != ignore_index
    num = valid.shape[0]
    step = num if chunk_size is None else chunk_size
    if step <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    def chunk_loss(s: Tensor, t: Tensor, v: Tensor) -> Tensor:
        return (_token_kl(s, t, kind, temperature, mix) * v).sum()

    checkpointed = chunk_size is not None and torch.is_grad_enabled() and student.requires_grad
    loss_sum = student.new_zeros((), dtype=torch.float32)
    for start in range(0, max(num, 1), step):
        rows = slice(start, start + step)
        args = (student[rows], teacher[rows], valid[rows])
        if checkpointed:
            part = torch.utils.checkpoint.checkpoint(chunk_loss, *args, use_reentrant=False)
        else:
            part = chunk_loss(*args)
        loss_sum = loss_sum + part
    return TokenLoss(loss_sum * temperature**2, valid.sum())
