"""``DistillConfig.validate``: ranges and relations, before any model or data loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.config import Checks

# The student (and teacher), data, training and output sections are shared: so are their checks.
from tune.recipes.common.section_checks import check_data, check_model, check_run, check_training

if TYPE_CHECKING:
    from tune.recipes.distill.config import DistillConfig


def _check_loss(cfg: DistillConfig, c: Checks) -> None:
    d = cfg.distillation
    c.positive("distillation.temperature", d.temperature)
    c.in_range("distillation.symmetric_mix", d.symmetric_mix, 0.0, 1.0 + 1e-12)
    c.in_range("distillation.ce_weight", d.ce_weight, 0.0, 1.0 + 1e-12)
    c.positive("distillation.chunk_size", d.chunk_size)
    if d.ce_weight == 1.0:
        c.warn("distillation.ce_weight", "is 1: the teacher is only measured, never distilled")


def _check_offloading(cfg: DistillConfig, c: Checks) -> None:
    if cfg.training.activation_offloading:
        c.error("training.activation_offloading", "is not supported by distill (set false)")


CHECKS = (check_model, check_data, check_training, _check_loss, check_run, _check_offloading)
