"""Temporarily switching adapters off, e.g. to use the model as its own frozen reference."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from tune.peft.expert_lora import param_lora_layers
from tune.peft.inject import lora_modules


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every LoRA layer computes its base output only (bit-identical to the base).

    For preference recipes: the policy with adapters disabled is the frozen reference model, with
    no copy. Previous states are restored on exit, even on error.

    Args:
        model: A model with LoRA layers (none merged).

    Yields:
        `model` itself.
    """
    layers = lora_modules(model)
    stacked = param_lora_layers(model)
    merged = [fqn for fqn, m in layers.items() if m.merged]
    merged += [fqn for fqn, lora in stacked.items() if lora.merged]
    if merged:
        raise RuntimeError(
            f"cannot disable merged adapters (e.g. {merged[:3]}); call unmerge_adapters(model) first"
        )
    previous = {fqn: m.adapters_enabled for fqn, m in layers.items()}
    previous_stacked = {fqn: lora.enabled for fqn, lora in stacked.items()}
    for module in layers.values():
        module.adapters_enabled = False
    for lora in stacked.values():
        lora.enabled = False
    try:
        yield model
    finally:
        for fqn, module in layers.items():
            module.adapters_enabled = previous[fqn]
        for fqn, lora in stacked.items():
            lora.enabled = previous_stacked[fqn]
