"""``DistillConfig.validate``: ranges and relations, before any model or data loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

# The student, data, training and output sections are the shared ones: so are their checks.
from tune.recipes.common.section_checks import (
    check_data_section,
    check_model_section,
    check_outputs_section,
    check_training_section,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import Checks, ValidationContext

if TYPE_CHECKING:
    from tune.recipes.distill.config import DistillConfig


def _check_teacher(cfg: DistillConfig, c: Checks) -> None:
    ckpt = cfg.teacher.checkpoint_dir
    if not c.require(bool(ckpt), "teacher.checkpoint_dir", "must name a checkpoint directory"):
        return
    if c.path_exists("teacher.checkpoint_dir", ckpt, "dir"):
        root = Path(ckpt).expanduser()
        c.require(
            (root / "config.json").is_file(),
            "teacher.checkpoint_dir",
            f"{ckpt} has no config.json (expected an HF checkpoint directory)",
        )
        c.require(
            any(root.glob("*.safetensors")),
            "teacher.checkpoint_dir",
            f"{ckpt} has no *.safetensors weights",
        )
    if cfg.teacher.dtype == "bfloat16" and cfg.device == "cpu":
        c.warn("teacher.dtype", "bfloat16 on a CPU without bf16 units is several times slower")


def _check_distillation(cfg: DistillConfig, c: Checks) -> None:
    d = cfg.distillation
    c.positive("distillation.temperature", d.temperature)
    c.in_range("distillation.symmetric_mix", d.symmetric_mix, 0.0, 1.0 + 1e-12)
    c.in_range("distillation.ce_weight", d.ce_weight, 0.0, 1.0 + 1e-12)
    c.positive("distillation.chunk_size", d.chunk_size)
    if d.ce_weight == 1.0:
        c.warn("distillation.ce_weight", "is 1: the teacher is only measured, never distilled")


def _check_parallel(cfg: DistillConfig, c: Checks) -> None:
    dist = cfg.distributed
    c.require(
        dist.tp_size == 1,
        "distributed.tp_size",
        f"distill shards student and teacher with FSDP only: expected 1, got {dist.tp_size}",
    )
    if dist.cpu_offload and not dist.fsdp:
        c.error("distributed.cpu_offload", "needs distributed.fsdp=true")
    if cfg.training.activation_offloading:
        c.error("training.activation_offloading", "is not supported by distill (set false)")


def check_distill_config(cfg: DistillConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of a distill config (errors and warnings)."""
    checks = Checks(context)
    for step in (
        check_model_section,
        _check_teacher,
        check_data_section,
        check_training_section,
        _check_distillation,
        check_outputs_section,
        _check_parallel,
    ):
        step(cfg, checks)  # type: ignore[arg-type]
    return checks.issues
