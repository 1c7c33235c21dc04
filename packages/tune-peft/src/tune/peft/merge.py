"""Merging active adapters into the base weights, unmerging exactly, and exporting a plain model.

`merge_adapters(keep_original=True)` (the default) keeps a copy of each adapted base weight as a
non-persistent buffer, so `unmerge_adapters` restores it bit-exactly: the cost is one extra copy of
every adapted weight while merged (for all-linear LoRA on a decoder, roughly the model's size minus
embeddings). With `keep_original=False` nothing extra is kept, and the merge cannot be undone.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from tune.peft.dense_weight import dense_weight, is_tensor_subclass
from tune.peft.expert_lora import (
    merge_parameter,
    param_lora_layers,
    remove_parameter_lora,
    unmerge_parameter,
)
from tune.peft.inject import _set_submodule, lora_modules


def _check_not_shared(model: nn.Module, layers: Mapping[str, nn.Module]) -> None:
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for fqn, module in layers.items():
        names = owners.get(id(module.weight), [])
        others = [n for n in names if n.rpartition(".")[0] != fqn]
        if others:
            raise ValueError(
                f"cannot merge into {fqn}.weight: the same Parameter is also {others} (tied weights); "
                "merging would change those too. Untie the weights or drop the adapter on this layer"
            )


def _owner(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    owner, _, name = fqn.rpartition(".")
    return model.get_submodule(owner), name


def merge_adapters(model: nn.Module, *, keep_original: bool = True) -> list[str]:
    """Fold every layer's (and stacked parameter's) active adapter into its base weight, in place.

    The merged model computes the same function with no adapter overhead. All layers are checked
    before any is changed: a quantized (tensor subclass) base weight or a weight tied to another
    module raises.

    Args:
        model: A model with LoRA layers.
        keep_original: Keep each base weight's copy so `unmerge_adapters` is bit-exact.

    Returns:
        Names of the merged layers, then of the merged stacked parameters.
    """
    layers = {n: m for n, m in lora_modules(model).items() if m.active_adapter is not None}
    stacked = {n: lora for n, lora in param_lora_layers(model).items() if lora.active}
    for fqn, lora in stacked.items():
        owner, name = _owner(model, fqn)
        if lora.merged:
            raise RuntimeError(f"{fqn}: adapter {lora.adapter_name!r} is already merged")
        if is_tensor_subclass(owner._parameters[name]):  # type: ignore[arg-type]
            raise TypeError(
                f"cannot merge into {fqn} of type {type(owner._parameters[name]).__name__} in "
                "place; use merge_and_unload(model, dequantize=True) for a dense merged model"
            )
    for fqn, module in layers.items():
        if module.merged:
            raise RuntimeError(f"{fqn}: adapter {module.active_adapter!r} is already merged")
        if is_tensor_subclass(module.weight):
            raise TypeError(
                f"cannot merge into {fqn}.weight of type {type(module.weight).__name__} in place; "
                "use merge_and_unload(model, dequantize=True) for a dense merged model"
            )
    _check_not_shared(model, layers)
    for fqn, module in layers.items():
        module.merge(keep_original=keep_original, module_name=fqn)
    for fqn in stacked:
        merge_parameter(*_owner(model, fqn), fqn, keep_original=keep_original)
    return list(layers) + list(stacked)


def unmerge_adapters(model: nn.Module) -> list[str]:
    """Restore every merged layer's base weight bit-exactly (needs `keep_original=True`).

    Args:
        model: A model merged with `merge_adapters`.

    Returns:
        Names of the unmerged layers.
    """
    layers = {n: m for n, m in lora_modules(model).items() if m.merged}
    for fqn, module in layers.items():
        module.unmerge(module_name=fqn)
    stacked = [n for n, lora in param_lora_layers(model).items() if lora.merged]
    for fqn in stacked:
        unmerge_parameter(*_owner(model, fqn), fqn)
    return list(layers) + stacked


def merge_and_unload(model: nn.Module, *, dequantize: bool = False) -> nn.Module:
    """Merge each active adapter and put plain `nn.Linear` layers back (for export or inference).

    Args:
        model: A model with LoRA layers; modified in place and returned.
        dequantize: Allow quantized (tensor subclass) base weights: they are dequantized to their
            original dtype and the merged layer is dense. Without it they raise.

    Returns:
        `model`, without `LoRALinear` layers.
    """
    layers = lora_modules(model)
    stacked = param_lora_layers(model)
    for fqn in stacked:
        owner, name = _owner(model, fqn)
        weight = owner._parameters[name]
        if weight is not None and is_tensor_subclass(weight) and not dequantize:
            raise TypeError(
                f"{fqn} is a {type(weight).__name__}; pass dequantize=True to merge into a dense "
                "weight"
            )
    for fqn, module in layers.items():
        if is_tensor_subclass(module.weight) and not dequantize:
            raise TypeError(
                f"{fqn}.weight is a {type(module.weight).__name__}; pass dequantize=True to merge "
                "into a dense weight"
            )
    _check_not_shared(model, {n: m for n, m in layers.items() if m.active_adapter is not None})
    aliases: dict[int, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(mod), []).append(name)
    for module in layers.values():
        if is_tensor_subclass(module.weight):
            module.weight = nn.Parameter(dense_weight(module.weight), requires_grad=False)
        if module.active_adapter is not None and not module.merged:
            module.merge(keep_original=False)
        if hasattr(module, "original_weight"):
            del module.original_weight
        linear = module.to_linear()
        for alias in aliases[id(module)]:
            _set_submodule(model, alias, linear)
    for fqn, lora in stacked.items():
        owner, name = _owner(model, fqn)
        weight = owner._parameters[name]
        assert weight is not None
        if is_tensor_subclass(weight):
            owner._parameters[name] = nn.Parameter(dense_weight(weight), requires_grad=False)
        if lora.active and not lora.merged:
            merge_parameter(owner, name, fqn, keep_original=False)
        lora.merged = False  # the merged weight is the new base: drop the adapter, not unmerge
        remove_parameter_lora(model, fqn)
    return model
