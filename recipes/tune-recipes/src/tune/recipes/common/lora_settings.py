"""Adapter settings checked by tune-peft's own rules at validation time, named by config key."""

from __future__ import annotations

from typing import Any

from tune.peft import LoraConfig


def lora_settings_problem(method: str, lora: Any) -> tuple[str, str] | None:
    """``(key under training.lora, message)`` when tune-peft refuses the adapter settings.

    Run by ``tune validate`` and before a run starts, so a scaling that would blow up
    activations (``alpha: 1e30``) is reported with its config key before any model loads.

    Args:
        method: ``lora``, ``qlora`` or ``dora``.
        lora: the recipe's ``training.lora`` section (``r``, ``alpha``, ``dropout``, ``targets``,
            ``exclude``, ``use_rslora``, ``init``).
    """
    try:
        LoraConfig(
            r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=list(lora.targets),
            exclude=list(lora.exclude), use_rslora=lora.use_rslora, use_dora=method == "dora",
            init=lora.init,
        )  # fmt: skip
    except (ValueError, TypeError) as err:
        field, _, message = str(err).partition(": ")
        if field.startswith("LoraConfig."):
            return field.removeprefix("LoraConfig."), message
        return "alpha", str(err)
    return None
