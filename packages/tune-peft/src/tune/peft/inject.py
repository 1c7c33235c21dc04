"""Putting LoRA adapters into any `nn.Module` by module-name pattern, switching and removing them."""

from __future__ import annotations

import logging

import torch
from torch import nn

from tune.peft.config import ALL_LINEAR, LoraConfig
from tune.peft.expert_lora import (
    add_parameter_lora,
    param_lora_layers,
    remove_parameter_lora,
    select_parameter_targets,
)
from tune.peft.lora_linear import LoRALinear
from tune.peft.module_patterns import name_matches, select_names
from tune.peft.state import count_parameters, mark_only_adapters_trainable

logger = logging.getLogger(__name__)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every `LoRALinear` in `model`, by module name, in module order.

    Args:
        model: Any module.
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the `nn.Linear` layers of `model` that can carry adapters (not adapters' own).

    Args:
        model: Any module.
    """
    wrappers = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name.startswith(w + ".") for w in wrappers)
    ]


def select_lora_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the linear layers `config.targets` selects, minus `config.exclude`, in module order.

    Raises if a target pattern matches no `nn.Linear` (listing the closest names) or if the final
    selection is empty.

    Args:
        model: Any module.
        config: The adapter's settings.
    """
    candidates = linear_module_names(model)
    if config.targets == ALL_LINEAR:
        selected = {n for n in candidates if not any(name_matches(h, n) for h in config.head_names)}
    else:
        selected = select_names(candidates, list(config.targets), what="LoraConfig.targets")
    for pattern in config.exclude:
        excluded = select_names(candidates, [pattern], what="LoraConfig.exclude", must_match=False)
        if not excluded:
            logger.warning("LoraConfig.exclude pattern %r matches no nn.Linear module", pattern)
        selected -= excluded
    if not selected:
        raise ValueError(
            f"LoraConfig selects no module: targets={config.targets!r}, exclude={config.exclude!r} "
            f"leave none of the {len(candidates)} nn.Linear layers (e.g. {candidates[:5]})"
        )
    targets = [n for n in candidates if n in selected]
    # The wrapper computes F.linear itself: a subclass with its own forward (fake-quantized,
    # float8, ...) would silently lose that behaviour.
    custom = {
        n: type(m).__name__
        for n in targets
        if not isinstance(m := model.get_submodule(n), LoRALinear)
        and type(m).forward is not nn.Linear.forward
    }
    if custom:
        raise TypeError(
            f"LoRA wraps nn.Linear layers whose forward is nn.Linear's; these override it: "
            f"{dict(list(custom.items())[:5])}. Apply LoRA before that conversion, or exclude them"
        )
    return targets


def _check_adapter_name(name: str) -> None:
    if not name or "." in name or not name.replace("_", "a").replace("-", "a").isalnum():
        raise ValueError(
            f"adapter name {name!r} must be a non-empty word (letters, digits, '_' or '-'), no dots"
        )


def _set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, leaf = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def apply_lora(
    model: nn.Module,
    config: LoraConfig,
    adapter_name: str = "default",
    *,
    activate: bool = False,
    freeze_base: bool = True,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Add a LoRA/DoRA adapter to the linear layers (and stacked parameters) `config` selects.

    Each selected `nn.Linear` is replaced by a `LoRALinear` sharing its `weight`/`bias` Parameters
    (module and parameter names are unchanged; the adapter adds `<name>.lora_A.weight`,
    `<name>.lora_B.weight` and, for DoRA, `<name>.lora_magnitude_vector`). A layer already adapted
    gains another named adapter. An adapter is active on a layer if it is the layer's first or if
    `activate` is set. Stacked 3-D parameters named by `config.target_parameters` get per-expert
    factors (see `tune.peft.expert_lora`; one adapter per parameter), active from the start.

    Args:
        model: Any module (a tune model, a `transformers` model, your own).
        config: Which layers, rank, scaling, DoRA, init.
        adapter_name: Name of this adapter (no dots).
        activate: Make this adapter the active one where others already exist.
        freeze_base: Then freeze everything except the active adapters (and biases per
            `config.bias`), as `mark_only_adapters_trainable` does.
        dtype: Dtype of the adapter factors; default each base weight's dtype.

    Returns:
        Names of the adapted modules in module order, then of the adapted stacked parameters.
    """
    _check_adapter_name(adapter_name)
    # Everything is selected and checked before the model is changed.
    targets = select_lora_targets(model, config) if config.targets else []
    params = select_parameter_targets(model, config.target_parameters)
    existing = param_lora_layers(model)
    taken = [p for p in params if p in existing]
    if taken:
        raise NotImplementedError(
            f"{taken[0]} already carries adapter {existing[taken[0]].adapter_name!r}; one adapter "
            "per stacked parameter is supported (delete_adapter() it first)"
        )
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    for fqn in targets:
        module = model.get_submodule(fqn)
        if isinstance(module, LoRALinear):
            module.add_adapter(
                adapter_name, config, activate=activate, dtype=dtype, module_name=fqn
            )
            continue
        wrapper = LoRALinear.from_linear(module)  # type: ignore[arg-type]
        wrapper.add_adapter(adapter_name, config, activate=True, dtype=dtype, module_name=fqn)
        # A layer registered under several names (shared) gets one wrapper everywhere.
        for alias in aliases[id(module)]:
            _set_submodule(model, alias, wrapper)
    for fqn in params:
        add_parameter_lora(model, fqn, config, adapter_name, dtype=dtype)
    if freeze_base:
        mark_only_adapters_trainable(model, bias=config.bias)
    counts = count_parameters(model)
    logger.info(
        "LoRA adapter %r on %d modules and %d stacked parameters (r=%d, dora=%s): %d trainable of "
        "%d parameters",
        adapter_name,
        len(targets),
        len(params),
        config.r,
        config.use_dora,
        counts.trainable,
        counts.total,
    )
    return targets + params


def initialize_adapters(model: nn.Module, adapter_name: str | None = None) -> list[str]:
    """Initialise adapters in place per their configs (DoRA magnitudes from the current base).

    For the meta-device flow: build the model on `meta`, `apply_lora`, materialise
    (`to_empty`) and load the base weights, then call this. Adapters added to a real model are
    initialised by `apply_lora` already.

    Args:
        model: A model with LoRA layers, base weights loaded.
        adapter_name: Which adapter; None for every adapter on every layer.

    Returns:
        Names of the layers touched.
    """
    touched = []
    for fqn, module in lora_modules(model).items():
        names = module.adapter_names if adapter_name is None else [adapter_name]
        for name in names:
            if name in module.adapter_names:
                module.reset_adapter(name, module_name=fqn)
                touched.append(fqn)
    for fqn, lora in param_lora_layers(model).items():
        if adapter_name in (None, lora.adapter_name):
            lora.reset_parameters()
            touched.append(fqn)
    if not touched:
        raise KeyError(f"no layer has an adapter named {adapter_name!r}")
    return sorted(set(touched), key=touched.index)


def set_active_adapter(model: nn.Module, adapter_name: str | None) -> list[str]:
    """Make `adapter_name` the active adapter on every layer that has it (others: none active).

    Trainability is not changed; call `mark_only_adapters_trainable` to train the new one.

    Args:
        model: A model with LoRA layers.
        adapter_name: The adapter to activate; None deactivates all.

    Returns:
        Names of the layers where it is now active.
    """
    layers = lora_modules(model)
    stacked = param_lora_layers(model)
    if (
        adapter_name is not None
        and not any(adapter_name in m.adapter_names for m in layers.values())
        and not any(lora.adapter_name == adapter_name for lora in stacked.values())
    ):
        known = sorted(
            {a for m in layers.values() for a in m.adapter_names}
            | {lora.adapter_name for lora in stacked.values()}
        )
        raise KeyError(f"no layer has an adapter named {adapter_name!r}; adapters: {known}")
    for fqn, lora in stacked.items():
        if lora.merged and lora.adapter_name != adapter_name:
            raise RuntimeError(f"cannot switch adapters while {fqn} is merged; unmerge first")
    active = []
    for fqn, module in layers.items():
        has = adapter_name is not None and adapter_name in module.adapter_names
        module.set_active_adapter(adapter_name if has else None)
        if has:
            active.append(fqn)
    for fqn, lora in stacked.items():
        lora.active = lora.adapter_name == adapter_name
        if lora.active:
            active.append(fqn)
    return active


def delete_adapter(model: nn.Module, adapter_name: str) -> list[str]:
    """Remove adapter `adapter_name` from every layer that has it.

    Args:
        model: A model with LoRA layers.
        adapter_name: The adapter to delete.

    Returns:
        Names of the layers it was removed from.
    """
    removed = []
    for fqn, module in lora_modules(model).items():
        if adapter_name in module.adapter_names:
            module.delete_adapter(adapter_name)
            removed.append(fqn)
    for fqn, lora in param_lora_layers(model).items():
        if lora.adapter_name == adapter_name:
            remove_parameter_lora(model, fqn)
            removed.append(fqn)
    if not removed:
        raise KeyError(f"no layer has an adapter named {adapter_name!r}")
    return removed


def remove_lora(model: nn.Module) -> nn.Module:
    """Put plain `nn.Linear` layers back (same Parameters), dropping every adapter unmerged.

    A layer merged with its original kept is unmerged first; one merged without it raises.

    Args:
        model: A model with LoRA layers; modified in place and returned.
    """
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    for fqn, module in lora_modules(model).items():
        if module.merged:
            module.unmerge(module_name=fqn)
        linear = module.to_linear()
        for alias in aliases[id(module)]:
            _set_submodule(model, alias, linear)
    for fqn in param_lora_layers(model):
        remove_parameter_lora(model, fqn)
    return model
