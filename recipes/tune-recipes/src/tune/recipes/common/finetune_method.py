"""Turn a loaded model into what a fine-tuning method trains: full, LoRA, QLoRA or DoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.models import CheckpointModel
from tune.peft import LoraConfig, apply_lora, count_parameters
from tune.quant import to_nf4_expert_weights, to_nf4_linear_weights
from tune.recipes.common.config_sections import ADAPTER_METHODS
from tune.recipes.common.lora_settings import HEAD_NAMES, lora_config_from
from tune.recipes.common.model_loading import load_pretrained

logger = logging.getLogger(__name__)
# Kept in float under QLoRA: the LM heads and the MoE routers (native `router`, HF `mlp.gate`,
# Qwen2-MoE's `shared_expert_gate`), small layers that pick the experts.
_FLOAT_IN_QLORA = (*HEAD_NAMES, "*.router", "*.mlp.gate", "*.shared_expert_gate")


def prepare_for_method(model: nn.Module, method: str, lora: LoraConfig | None) -> list[str]:
    """Freeze/quantize/adapt ``model`` in place for ``method``; returns the adapted module names.

    Args:
        model: the loaded model (native, or transformers').
        method: ``full``, ``lora``, ``qlora`` (NF4 base weights and expert stacks, then LoRA) or
            ``dora``.
        lora: adapter settings (required for the adapter methods).
    """
    if method == "full":
        model.requires_grad_(True)
        adapted: list[str] = []
    else:
        if lora is None:
            raise ValueError(f"training.method {method!r} needs training.lora settings")
        if method == "qlora":
            model.requires_grad_(False)  # NF4 weights are frozen by construction
            logger.info("QLoRA: %s", to_nf4_linear_weights(model, exclude=_FLOAT_IN_QLORA))
            to_nf4_expert_weights(model)  # stacked MoE experts [E, out, in], if any
        adapted = apply_lora(model, lora)
    counts = count_parameters(model)
    logger.info(
        "%s: %s trainable of %s parameters (%.2f%%)", method, f"{counts.trainable:,}",
        f"{counts.total:,}", 100.0 * counts.trainable / max(counts.total, 1),
    )  # fmt: skip
    return adapted


def load_prepared(
    checkpoint_dir: str | Path,
    method: str,
    lora: LoraConfig | None,
    *,
    dtype: torch.dtype,
    device: torch.device,
    implementation: str = "native",
) -> CheckpointModel:
    """Load ``checkpoint_dir`` and ``prepare_for_method`` its model (same arguments)."""
    ckpt = load_pretrained(
        checkpoint_dir, dtype=dtype, device=device, implementation=implementation
    )
    prepare_for_method(ckpt.model, method, lora)
    return ckpt


def load_for_method(
    checkpoint_dir: str | Path,
    method: str,
    lora_settings: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    implementation: str = "native",
) -> tuple[CheckpointModel, LoraConfig | None]:
    """Load ``checkpoint_dir`` and make it what ``method`` trains (frozen/NF4 base, adapters).

    Args:
        checkpoint_dir: an HF checkpoint directory.
        method: ``full``, ``lora``, ``qlora`` or ``dora``.
        lora_settings: the config's ``training.lora`` section; unused for ``full``.
        dtype: parameter dtype.
        device: where the weights go.
        implementation: ``native``, ``transformers`` or ``auto`` (``model.implementation``).

    Returns:
        The checkpoint (its ``model`` prepared) and the adapter settings (None for ``full``).
    """
    lora = lora_config_from(method, lora_settings) if method in ADAPTER_METHODS else None
    ckpt = load_prepared(
        checkpoint_dir, method, lora, dtype=dtype, device=device, implementation=implementation
    )
    return ckpt, lora
