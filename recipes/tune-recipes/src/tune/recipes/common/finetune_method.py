"""Turn a loaded model into what a fine-tuning method trains: full, LoRA, QLoRA or DoRA."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.models import CheckpointModel
from tune.peft import LoraConfig, apply_lora, count_parameters
from tune.quant import nf4_shardable, to_nf4_linear_weights
from tune.recipes.common.model_loading import load_pretrained

logger = logging.getLogger(__name__)

ADAPTER_METHODS = ("lora", "qlora", "dora")
# The LM head is never adapted nor quantized: its weight may be tied to the embeddings.
HEAD_NAMES = ("output",)


def lora_config_from(
    method: str,
    *,
    r: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str],
    exclude: Sequence[str],
    use_rslora: bool,
    init: str,
) -> LoraConfig:
    """The tune-peft settings of an adapter method (DoRA sets ``use_dora``)."""
    return LoraConfig(
        r=r,
        alpha=alpha,
        dropout=dropout,
        targets=list(targets),
        exclude=[*exclude, *HEAD_NAMES],
        use_rslora=use_rslora,
        use_dora=method == "dora",
        init=init,  # type: ignore[arg-type]
    )


def prepare_for_method(model: nn.Module, method: str, lora: LoraConfig | None) -> list[str]:
    """Freeze/quantize/adapt ``model`` in place for ``method``; returns the adapted module names.

    Args:
        model: the loaded native model.
        method: ``full``, ``lora``, ``qlora`` (NF4 base weights, then LoRA) or ``dora``.
        lora: adapter settings (required for the adapter methods).
    """
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        adapted: list[str] = []
    else:
        if lora is None:
            raise ValueError(f"training.method {method!r} needs training.lora settings")
        if method == "qlora":
            for p in model.parameters():  # NF4 weights are frozen by construction
                p.requires_grad_(False)
            stats = to_nf4_linear_weights(model, exclude=list(HEAD_NAMES))
            logger.info("QLoRA: %s", stats)
        adapted = apply_lora(model, lora)
    counts = count_parameters(model)
    logger.info(
        "%s: %s trainable of %s parameters (%.2f%%)",
        method,
        f"{counts.trainable:,}",
        f"{counts.total:,}",
        100.0 * counts.trainable / max(counts.total, 1),
    )
    return adapted


def unshardable_frozen_params(model: nn.Module, num_shards: int) -> list[nn.Parameter]:
    """Frozen NF4 weights FSDP2 cannot split evenly over ``num_shards`` ranks (kept whole).

    Only weights with fewer than ``num_shards`` second-level NF4 scale blocks qualify (under
    ``num_shards * 16,384`` elements), so keeping them whole costs little memory.
    """
    kept = [
        (name, p)
        for name, p in model.named_parameters()
        if not p.requires_grad and not nf4_shardable(p.data, num_shards)
    ]
    if kept:
        logger.info(
            "QLoRA: %d NF4 weights too small to split over %d ranks stay whole on each (%s...)",
            len(kept),
            num_shards,
            ", ".join(n for n, _ in kept[:3]),
        )
    return [p for _, p in kept]


def load_for_method(
    checkpoint_dir: str | Path,
    method: str,
    lora_settings: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[CheckpointModel, LoraConfig | None]:
    """Load ``checkpoint_dir`` and make it what ``method`` trains (frozen/NF4 base, adapters).

    Args:
        checkpoint_dir: an HF checkpoint directory.
        method: ``full``, ``lora``, ``qlora`` or ``dora``.
        lora_settings: the config's ``training.lora`` section (r, alpha, dropout, targets,
            exclude, use_rslora, init); unused for ``full``.
        dtype: parameter dtype.
        device: where the weights go.

    Returns:
        The loaded checkpoint (its ``model`` prepared in place) and the adapter settings
        (None for full fine-tuning).
    """
    ckpt = load_pretrained(checkpoint_dir, dtype=dtype, device=device)
    lora = None
    if method in ADAPTER_METHODS:
        lc = lora_settings
        lora = lora_config_from(
            method, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, targets=lc.targets,
            exclude=lc.exclude, use_rslora=lc.use_rslora, init=lc.init,
        )  # fmt: skip
    prepare_for_method(ckpt.model, method, lora)
    return ckpt, lora
