"""``SFTConfig.validate``: ranges and relations, before any model or data loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.config import Checks
from tune.recipes.common.availability import TORCHAO, require_package
from tune.recipes.common.section_checks import (
    builds_with_transformers,
    check_data,
    check_model,
    check_run,
    check_training,
)

if TYPE_CHECKING:
    from tune.recipes.sft.config import SFTConfig


def _check_offloading_and_qat(cfg: SFTConfig, c: Checks) -> None:
    if cfg.training.activation_offloading and cfg.device == "cpu":
        c.warn("training.activation_offloading", "has no effect on the CPU")
    if cfg.qat.scheme is not None:
        require_package(c, "qat.scheme", TORCHAO, "quantization-aware training")
    if cfg.qat.scheme is not None and cfg.training.method == "qlora":
        c.error("qat.scheme", "QAT and QLoRA (an NF4 base) cannot be combined")
    if cfg.qat.scheme is not None and builds_with_transformers(cfg.model):
        c.error(
            "qat.scheme",
            f"QAT needs a native model; model.implementation={cfg.model.implementation} builds "
            "this checkpoint with transformers",
        )
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


CHECKS = (check_model, check_data, check_training, check_run, _check_offloading_and_qat)
