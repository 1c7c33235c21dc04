"""Adapter state: trainability, parameter counts, adapter-only state dicts and loading them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tune.peft.config import BIAS_MODES, BiasMode
from tune.peft.dense_weight import is_tensor_subclass
from tune.peft.expert_lora import factor_key, param_lora_layers
from tune.peft.lora_linear import LoRALinear


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _bias_names(model: nn.Module, bias: str) -> list[str]:
    """Names of base bias parameters that train under `bias` mode."""
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    if bias == "none":
        return []
    if bias == "lora_only":
        return [f"{n}.bias" for n, m in _lora_layers(model).items() if m.bias is not None]
    return [n for n, _ in model.named_parameters() if n == "bias" or n.endswith(".bias")]


def mark_only_adapters_trainable(model: nn.Module, bias: BiasMode = "none") -> list[str]:
    """Freeze every parameter except the active adapters' (and the biases `bias` selects).

    Args:
        model: A model with LoRA layers.
        bias: `"none"`, `"all"` (every `*.bias`) or `"lora_only"` (biases of adapted layers).

    Returns:
        Names of the parameters left trainable.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    names = list(_adapter_tensors(model, None)) + _bias_names(model, bias)
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    return names


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require grad, by name (what to give the optimizer).

    Args:
        model: Any module.
    """
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a model.

    Args:
        trainable: Elements that require grad.
        total: All elements (a quantized weight counts its logical [out, in] elements).
        trainable_bytes: Memory of the trainable parameters.
    """

    trainable: int
    total: int
    trainable_bytes: int

    @property
    def trainable_fraction(self) -> float:
        """`trainable / total` (0 for an empty model)."""
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and total parameters (shared Parameters once).

    Args:
        model: Any module.
    """
    trainable = total = nbytes = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            nbytes += param.numel() * param.element_size()
    return ParameterCount(trainable=trainable, total=total, trainable_bytes=nbytes)


def _adapter_tensors(model: nn.Module, adapter_name: str | None) -> dict[str, nn.Parameter]:
    tensors: dict[str, nn.Parameter] = {}
    for fqn, module in _lora_layers(model).items():
        if adapter_name is None or adapter_name in module.adapter_names:
            for key, value in module.adapter_tensors(adapter_name).items():
                tensors[f"{fqn}.{key}"] = value
    for fqn, lora in param_lora_layers(model).items():
        if lora.adapter_name == adapter_name or (adapter_name is None and lora.active):
            tensors[factor_key(fqn, "lora_A")] = lora.lora_A
            tensors[factor_key(fqn, "lora_B")] = lora.lora_B
    return tensors


def _adapter_bias_mode(model: nn.Module, adapter_name: str | None) -> str:
    for module in _lora_layers(model).values():
        name = module.active_adapter if adapter_name is None else adapter_name
        if name is not None and name in module.adapter_names:
            return module.adapter_config(name).bias
    for lora in param_lora_layers(model).values():
        if lora.adapter_name == adapter_name or (adapter_name is None and lora.active):
            return lora.config.bias
    return "none"


def _expected_adapter_state(model: nn.Module, adapter_name: str | None) -> dict[str, nn.Parameter]:
    tensors = _adapter_tensors(model, adapter_name)
    if not tensors:
        known = sorted(
            {a for m in _lora_layers(model).values() for a in m.adapter_names}
            | {lora.adapter_name for lora in param_lora_layers(model).values()}
        )
        which = "no active adapter" if adapter_name is None else f"no adapter {adapter_name!r}"
        raise KeyError(f"the model has {which}; adapters present: {known}")
    params = dict(model.named_parameters())
    for name in _bias_names(model, _adapter_bias_mode(model, adapter_name)):
        tensors[name] = params[name]
    return tensors


def adapter_state_dict(
    model: nn.Module, adapter_name: str | None = None
) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed by native name, e.g. `layers.0.attn.q_proj.lora_A.weight`.

    Includes `lora_A.weight` [r, in], `lora_B.weight` [out, r], DoRA's `lora_magnitude_vector`
    [out], the per-expert factors of stacked parameters (`<owner>.param_lora.<param>.lora_A`
    [E, r, in], `.lora_B` [E, out, r]) and, if the adapter trains biases, those biases. Tensors
    are detached and share storage with the model (like `state_dict()`).

    Args:
        model: A model with LoRA layers.
        adapter_name: Which adapter; None for the active one.
    """
    return {k: v.detach() for k, v in _expected_adapter_state(model, adapter_name).items()}


def load_adapter_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    adapter_name: str | None = None,
    *,
    strict: bool = True,
) -> list[str]:
    """Copy an adapter state dict (as from `adapter_state_dict`) into the model's adapter.

    Args:
        model: A model already carrying the adapter (see `apply_lora`).
        state_dict: Native-named adapter tensors.
        adapter_name: Which adapter to load into; None for the active one.
        strict: Also raise when the state dict lacks some of the adapter's tensors.

    Returns:
        The keys loaded.
    """
    expected = _expected_adapter_state(model, adapter_name)
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise ValueError(
            f"adapter state dict has {len(unexpected)} keys the model's adapter lacks, e.g. "
            f"{unexpected[:5]}; expected keys like {sorted(expected)[:3]}"
        )
    missing = sorted(set(expected) - set(state_dict))
    if strict and missing:
        raise ValueError(
            f"adapter state dict lacks {len(missing)} of the adapter's tensors, e.g. {missing[:5]}"
        )
    for key, value in state_dict.items():
        target = expected[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"adapter tensor {key!r}: shape {tuple(value.shape)} does not match the model's "
                f"{tuple(target.shape)}"
            )
        if is_tensor_subclass(target):
            raise TypeError(f"cannot load {key!r} into a {type(target).__name__} parameter")
    with torch.no_grad():
        for key, value in state_dict.items():
            expected[key].copy_(value)
    return sorted(state_dict)
