"""A config's ``training.lora`` section as tune-peft settings, checked by tune-peft's own rules."""

from __future__ import annotations

from typing import Any

from tune.peft import LoraConfig

# The LM head is never adapted nor quantized: its weight may be tied to the embeddings.
# Native models call it ``output``, transformers' ``lm_head``.
HEAD_NAMES = ("output", "lm_head")
# One exclude pattern for both heads (tune-peft warns about a pattern that matches nothing).
_HEAD_PATTERN = "re:" + "|".join(HEAD_NAMES)


def lora_config_from(method: str, lora: Any) -> LoraConfig:
    """The tune-peft settings of an adapter method (DoRA sets ``use_dora``; the head is excluded).

    Args:
        method: ``lora``, ``qlora`` or ``dora``.
        lora: the ``training.lora`` section (``r``, ``alpha``, ``dropout``, ``targets``,
            ``exclude``, ``target_parameters``, ``use_rslora``, ``init``).
    """
    return LoraConfig(
        r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=list(lora.targets),
        exclude=[*lora.exclude, _HEAD_PATTERN], target_parameters=list(lora.target_parameters),
        use_rslora=lora.use_rslora,
        use_dora=method == "dora", init=lora.init,
    )  # fmt: skip


def lora_settings_problem(method: str, lora: Any) -> tuple[str, str] | None:
    """``(key under training.lora, message)`` when tune-peft refuses the adapter settings.

    Run by ``tune validate`` and before a run starts, so a scaling that would blow up
    activations (``alpha: 1e30``) is reported with its config key before any model loads.
    """
    try:
        lora_config_from(method, lora)
    except (ValueError, TypeError) as err:
        field, _, message = str(err).partition(": ")
        if field.startswith("LoraConfig."):
            return field.removeprefix("LoraConfig."), message
        return "alpha", str(err)
    return None
