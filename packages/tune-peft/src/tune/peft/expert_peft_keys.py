"""PEFT's keys and layout for LoRA on stacked parameters (`target_parameters`), both ways.

PEFT wraps the module owning a targeted parameter in a ``ParamWrapper``; several targeted
parameters of one module nest, the first in the module's parameter order innermost, so their
factors are saved under the owner's name with one ``base_layer.`` per level above them. For
transformers' Qwen3-MoE experts with both stacks targeted::

    base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight   # gate_up_proj
    base_model.model.model.layers.0.mlp.experts.lora_A.weight              # down_proj

with ``lora_A.weight`` [E * r, in] (expert-major rows) and ``lora_B.weight`` [out, r * E]
(rank-major columns); see `to_peft_factors`. The native order of parameters in an owner is taken
as the HF one (true when the native module is a port of transformers').
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tune.peft.expert_lora import (
    CONTAINER,
    StackedLoRA,
    factor_key,
    from_peft_factors,
    param_lora_layers,
    to_peft_factors,
)
from tune.peft.module_patterns import closest_names, name_matches

KeyMap = Callable[[str], str]
PEFT_PREFIX = "base_model.model."
_FACTORS = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B"}


def _owner_order(model: nn.Module, fqns: list[str]) -> dict[str, list[str]]:
    """Owner module name -> the given parameter names on it, in the owner's parameter order."""
    by_owner: dict[str, list[str]] = {}
    for fqn in fqns:
        by_owner.setdefault(fqn.rpartition(".")[0], []).append(fqn)
    for owner, names in by_owner.items():
        order = list(model.get_submodule(owner)._parameters)
        names.sort(key=lambda n: order.index(n.rpartition(".")[2]))
    return by_owner


def _peft_module_key(hf_param: str, depth: int) -> str:
    owner = hf_param.rpartition(".")[0]
    return PEFT_PREFIX + owner + ".base_layer" * depth


def stacked_peft_tensors(
    model: nn.Module, adapter_name: str | None, key_map: KeyMap
) -> tuple[dict[str, torch.Tensor], list[str], StackedLoRA | None]:
    """PEFT tensors and `target_parameters` of an adapter's stacked parameters.

    Args:
        model: A model with stacked-parameter adapters.
        adapter_name: Which adapter; None for the active one.
        key_map: Native -> HF parameter-key function.

    Returns:
        ``(tensors, target_parameters, one of the adapters or None)``.
    """
    layers = {
        fqn: lora
        for fqn, lora in param_lora_layers(model).items()
        if lora.adapter_name == adapter_name or (adapter_name is None and lora.active)
    }
    tensors: dict[str, torch.Tensor] = {}
    hf_names: list[str] = []
    for names in _owner_order(model, list(layers)).values():
        for index, fqn in enumerate(names):
            hf = key_map(fqn)
            hf_names.append(hf)
            prefix = _peft_module_key(hf, len(names) - 1 - index)
            a, b = to_peft_factors(layers[fqn])
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = b
    return tensors, _target_parameters(model, hf_names, key_map), next(iter(layers.values()), None)


def _stacked_hf_names(model: nn.Module, key_map: KeyMap) -> dict[str, str]:
    """HF parameter name -> native name, for every 3-D parameter key_map accepts."""
    names: dict[str, str] = {}
    for name, param in model.named_parameters():
        if param.dim() == 3 and f".{CONTAINER}." not in f".{name}":
            try:
                names[key_map(name)] = name
            except (KeyError, ValueError):
                continue
    return names


def _target_parameters(model: nn.Module, hf_names: list[str], key_map: KeyMap) -> list[str]:
    """`<owner leaf>.<param>` suffixes if they select exactly `hf_names`, else the full names."""
    if not hf_names:
        return []
    short = sorted({".".join(n.split(".")[-2:]) for n in hf_names})
    everything = _stacked_hf_names(model, key_map)
    hits = {n for n in everything if any(name_matches(s, n) for s in short)}
    return short if hits == set(hf_names) else sorted(hf_names)


def stacked_from_peft(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    target_parameters: tuple[str, ...],
    key_map: KeyMap,
    r: int,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The stacked-parameter factors of a PEFT state dict, in native names and layout.

    Args:
        model: The native model.
        state_dict: ``adapter_model.safetensors`` contents (keys not for stacked parameters are
            left alone).
        target_parameters: The config's `target_parameters`.
        key_map: Native -> HF parameter-key function.
        r: The config's rank.

    Returns:
        ``(native tensors keyed like `adapter_state_dict`, adapted native parameter names)``;
        the PEFT keys used are those whose native tensors came back.

    Raises:
        ValueError: a pattern matches no 3-D parameter of the model, or a tensor's shape does not
            fit its parameter.
    """
    hf_to_native = _stacked_hf_names(model, key_map)
    targeted: list[str] = []
    for pattern in target_parameters:
        hits = [native for hf, native in hf_to_native.items() if name_matches(pattern, hf)]
        if not hits:
            raise ValueError(
                f"adapter_config.json target_parameters {pattern!r} matches no 3-D parameter of "
                f"the model after key_map; closest: {closest_names(pattern, hf_to_native)}"
            )
        targeted += [h for h in hits if h not in targeted]
    peft_keys: dict[str, str] = {}  # PEFT module key -> native parameter
    for names in _owner_order(model, targeted).values():
        for index, fqn in enumerate(names):
            peft_keys[_peft_module_key(key_map(fqn), len(names) - 1 - index)] = fqn
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        module, _, suffix = key.rpartition(".lora_")
        factor = _FACTORS.get("lora_" + suffix)
        if factor is not None and module in peft_keys:
            found.setdefault(peft_keys[module], {})[factor] = value
    native: dict[str, torch.Tensor] = {}
    for fqn, factors in found.items():
        if set(factors) != {"lora_A", "lora_B"}:
            raise ValueError(f"PEFT adapter has only {sorted(factors)} for {key_map(fqn)}")
        weight = model.get_parameter(fqn)
        owner = model.get_submodule(fqn.rpartition(".")[0])
        experts, rows, cols = weight.shape
        in_f, out_f = (rows, cols) if getattr(owner, "is_transposed", False) else (cols, rows)
        a, b = factors["lora_A"], factors["lora_B"]
        want_a, want_b = (experts * r, in_f), (out_f, r * experts)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise ValueError(
                f"PEFT factors for {key_map(fqn)} have shapes lora_A {tuple(a.shape)}, lora_B "
                f"{tuple(b.shape)}; the model's {tuple(weight.shape)} weight with r={r} needs "
                f"lora_A {want_a} (E * r, in), lora_B {want_b} (out, r * E)"
            )
        a3, b3 = from_peft_factors(a, b, experts)
        native[factor_key(fqn, "lora_A")] = a3
        native[factor_key(fqn, "lora_B")] = b3
    order = list(hf_to_native.values())
    return native, sorted((t for t in targeted if t in found), key=order.index)


def peft_keys_of(model: nn.Module, fqns: list[str], key_map: KeyMap) -> set[str]:
    """The PEFT keys the factors of stacked parameters `fqns` are saved under.

    Args:
        model: The native model.
        fqns: Adapted native parameter names.
        key_map: Native -> HF parameter-key function.
    """
    keys = set()
    for names in _owner_order(model, fqns).values():
        for index, fqn in enumerate(names):
            module = _peft_module_key(key_map(fqn), len(names) - 1 - index)
            keys |= {f"{module}.{suffix}" for suffix in _FACTORS}
    return keys
