"""Setup steps of distillation: the frozen teacher, the compared vocabulary, resume checks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
from torch import nn

from tune.models import CheckpointModel
from tune.recipes.common.model_loading import load_pretrained

logger = logging.getLogger(__name__)

# Config keys of a distill run whose change makes its checkpoints unusable for resuming, beyond
# those of common.train_state (the teacher and the loss define the training signal).
DISTILL_RESUME_KEYS = (
    "teacher.checkpoint_dir",
    "distillation.kind",
    "distillation.temperature",
    "distillation.symmetric_mix",
    "distillation.ce_weight",
)


def load_teacher(
    checkpoint_dir: str | Path, *, dtype: torch.dtype, device: torch.device
) -> CheckpointModel:
    """The teacher of ``checkpoint_dir``, frozen (no parameter requires grad) and in eval mode.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and safetensors weights.
        dtype: parameter dtype.
        device: where the weights go.
    """
    ckpt = load_pretrained(checkpoint_dir, dtype=dtype, device=device)
    ckpt.model.requires_grad_(False)
    ckpt.model.eval()
    return ckpt


def _vocab_size(model: nn.Module) -> int:
    output = model.get_submodule("output")
    return int(cast(nn.Linear, output).weight.shape[0])


def compared_vocab_size(
    student: nn.Module, teacher: nn.Module, tokenizer_vocab: int, *, teacher_dir: str | Path
) -> int | None:
    """How many logits to compare: None when both vocabularies agree, else the smaller one.

    Checkpoints of one tokenizer may pad their embedding tables to different sizes; the rows
    beyond the tokenizer's vocabulary are never the target of a label, so the KL is computed over
    the first ``min(V_student, V_teacher)`` logits.

    Raises:
        ValueError: the smaller vocabulary does not cover the tokenizer's (another tokenizer).
    """
    v_student, v_teacher = _vocab_size(student), _vocab_size(teacher)
    if v_student == v_teacher:
        return None
    smaller = min(v_student, v_teacher)
    if smaller < tokenizer_vocab:
        raise ValueError(
            f"teacher.checkpoint_dir {teacher_dir}: vocabulary sizes differ (student "
            f"{v_student}, teacher {v_teacher}) and {smaller} < the tokenizer's {tokenizer_vocab}: "
            "student and teacher must share a tokenizer"
        )
    logger.info(
        "student vocab %d, teacher vocab %d: KL over the first %d logits",
        v_student,
        v_teacher,
        smaller,
    )
    return smaller
