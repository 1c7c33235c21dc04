"""Turn a loaded model into what a fine-tuning method trains: full, LoRA, QLoRA or DoRA."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from tune.peft import LoraConfig, apply_lora, count_parameters
from tune.quant import to_nf4_linear_weights

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
