"""``SFTConfig.validate``: ranges and relations, before any model or data loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.recipes.common.section_checks import (
    check_data_section,
    check_model_section,
    check_outputs_section,
    check_training_section,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import Checks, ValidationContext

if TYPE_CHECKING:
    from tune.recipes.sft.config import SFTConfig


def check_parallel_section(cfg: SFTConfig, c: Checks) -> None:
    dist = cfg.distributed
    if c.positive("distributed.tp_size", dist.tp_size):
        c.require(
            c.context.world_size % dist.tp_size == 0,
            "distributed.tp_size",
            f"{dist.tp_size} does not divide the world size {c.context.world_size}",
        )
    if dist.cpu_offload and not dist.fsdp:
        c.error("distributed.cpu_offload", "needs distributed.fsdp=true")
    if cfg.data.padding_free and dist.tp_size > 1:
        c.error(
            "data.padding_free",
            "cannot be combined with distributed.tp_size > 1: sequence-parallel layers split "
            "the sequence, and a padding-free row has any length",
        )
    if cfg.training.activation_offloading and cfg.device == "cpu":
        c.warn("training.activation_offloading", "has no effect on the CPU")
    if cfg.qat.scheme is not None and cfg.training.method == "qlora":
        c.error("qat.scheme", "QAT and QLoRA (an NF4 base) cannot be combined")
    if (
        cfg.qat.scheme is not None
        and cfg.training.method in ("lora", "dora")
        and cfg.checkpointing.save_merged
    ):
        c.error(
            "checkpointing.save_merged",
            "with qat.scheme the merged, quantized model is written to <output_dir>/quantized; "
            "set save_merged=false",
        )


def check_sft_config(cfg: SFTConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of an SFT config (errors and warnings).

    The per-section checks (`check_model_section`, ...) are public: recipes whose configs embed
    the sft sections (distill, preference) reuse them.
    """
    checks = Checks(context)
    for step in (
        check_model_section,
        check_data_section,
        check_training_section,
        check_outputs_section,
        check_parallel_section,
    ):
        step(cfg, checks)
    return checks.issues
