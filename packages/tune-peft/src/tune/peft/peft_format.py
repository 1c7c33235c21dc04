"""PEFT interop: `adapter_config.json` vocabulary and `adapter_model.safetensors` key names.

PEFT keys look like `base_model.model.<hf module name>.lora_A.weight`. Native module names map to
HF ones through a caller-supplied key map over *parameter* keys (the same `str -> str` function
that maps a base checkpoint, e.g. `layers.0.attn.q_proj.weight` ->
`model.layers.0.self_attn.q_proj.weight`); it is applied to `<module>.weight` and inverted over the
model's own linear layers, so one function serves both directions. Without a key map, native names
are used as they are (a `transformers` model adapted directly).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tune.peft.expert_lora import CONTAINER
from tune.peft.expert_peft_keys import peft_keys_of, stacked_from_peft, stacked_peft_tensors
from tune.peft.inject import apply_lora, linear_module_names, lora_modules
from tune.peft.module_patterns import REGEX_PREFIX, closest_names
from tune.peft.peft_config import (
    AdapterConfigLike,
    _config_and_source,
    from_peft_config,
    to_peft_config,
)
from tune.peft.state import adapter_state_dict, load_adapter_state_dict

KeyMap = Callable[[str], str]

PEFT_PREFIX = "base_model.model."
ADAPTER_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


class AdapterMismatchError(ValueError):
    """A PEFT adapter that does not fit the model: a tensor for no linear layer or of wrong shape."""


def _check_factor_shape(key: str, value: torch.Tensor, suffix: str, layer: nn.Linear,
                        hf_module: str, trained_on: str) -> None:  # fmt: skip
    out_f, in_f, shape = layer.out_features, layer.in_features, tuple(value.shape)
    if suffix == "lora_A.weight":
        expected, fits = f"[r, in_features={in_f}]", len(shape) == 2 and shape[1] == in_f
    elif suffix == "lora_B.weight":
        expected, fits = f"[out_features={out_f}, r]", len(shape) == 2 and shape[0] == out_f
    else:
        expected, fits = f"[out_features={out_f}]", shape == (out_f,)
    if not fits:
        raise AdapterMismatchError(
            f"PEFT adapter key {key!r} has shape {shape}, but the model's {hf_module}.weight has "
            f"shape ({out_f}, {in_f}), so it must be {expected}: the adapter was trained on "
            f"another base{trained_on}"
        )


def _identity(key: str) -> str:
    return key


def _hf_module_name(fqn: str, key_map: KeyMap) -> str:
    mapped = key_map(f"{fqn}.weight")
    if not mapped.endswith(".weight"):
        raise ValueError(
            f"key_map({fqn + '.weight'!r}) returned {mapped!r}; expected a name ending in '.weight'"
        )
    return mapped[: -len(".weight")]


def adapter_key_map(key_map: KeyMap) -> KeyMap:
    """Lift a base-parameter key map to adapter keys, for writers that rename key by key.

    `<m>.lora_A.weight` -> `<HF m>.lora_A.weight` (likewise `lora_B.weight`,
    `lora_magnitude_vector`) where `<HF m>` is `key_map("<m>.weight")` minus `.weight`; any other
    key goes through `key_map` as it is. Trained biases of adapted layers need PEFT's
    `base_layer.bias` name, which only `export_peft_adapter` (it knows which layers are adapted)
    produces.

    Args:
        key_map: Native -> HF parameter-key function, e.g. `layers.0.attn.q_proj.weight` ->
            `model.layers.0.self_attn.q_proj.weight`.
    """

    def mapped(key: str) -> str:
        suffix = next((s for s in ADAPTER_SUFFIXES if key.endswith("." + s)), None)
        if suffix is None:
            return key_map(key)
        return f"{_hf_module_name(key[: -len(suffix) - 1], key_map)}.{suffix}"

    return mapped


def peft_target_modules(
    model: nn.Module, adapted: list[str], key_map: KeyMap | None = None
) -> list[str]:
    """PEFT `target_modules` selecting exactly `adapted` in the HF model.

    The sorted leaf names (`["q_proj", "v_proj"]`) when they select exactly these layers, else the
    full HF module names.

    Args:
        model: The native model.
        adapted: Native names of the adapted layers.
        key_map: Native -> HF parameter-key function (None: identity).
    """
    key_map = key_map or _identity
    hf_adapted = {_hf_module_name(n, key_map) for n in adapted}
    leaves = {n.rpartition(".")[2] for n in hf_adapted}
    hf_linear = set()
    for name in linear_module_names(model):
        try:
            hf_linear.add(_hf_module_name(name, key_map))
        except (KeyError, ValueError):
            continue
    wrappers = list(lora_modules(model))
    others = {
        n.rpartition(".")[2]
        for n, m in model.named_modules()
        if n and not isinstance(m, nn.Linear) and not any(n.startswith(w + ".") for w in wrappers)
    }
    by_leaf = {n for n in hf_linear if n.rpartition(".")[2] in leaves}
    if by_leaf == hf_adapted and not leaves & others:
        return sorted(leaves)
    return sorted(hf_adapted)


def export_peft_adapter(
    model: nn.Module,
    *,
    adapter_name: str | None = None,
    key_map: KeyMap | None = None,
    task_type: str | None = "CAUSAL_LM",
    base_model_name_or_path: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter as PEFT writes it: (tensors for `adapter_model.safetensors`, `adapter_config.json`).

    Stacked expert parameters are written as PEFT's `target_parameters` (see
    `tune.peft.expert_peft_keys`); `key_map` must map them to the transformers model's stacked
    parameter names (e.g. `model.layers.0.mlp.experts.gate_up_proj`).

    Args:
        model: A model with LoRA layers.
        adapter_name: Which adapter; None for the active one.
        key_map: Native -> HF parameter-key function (None: names kept as they are).
        task_type: PEFT task type recorded in the config.
        base_model_name_or_path: Recorded in the config.

    Returns:
        `(state_dict, adapter_config)`: contiguous CPU-independent tensors keyed like
        `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, and a JSON-ready dict.
    """
    key_map = key_map or _identity
    to_hf = adapter_key_map(key_map)
    layers = lora_modules(model)
    native = adapter_state_dict(model, adapter_name)
    adapted = [
        fqn
        for fqn, m in layers.items()
        if (m.active_adapter if adapter_name is None else adapter_name) in m.adapter_names
    ]
    tensors, target_parameters, stacked = stacked_peft_tensors(model, adapter_name, key_map)
    stacked_keys = {k for k in native if f".{CONTAINER}." in f".{k}"}
    for key, value in native.items():
        if key in stacked_keys:
            continue
        if any(key.endswith("." + s) for s in ADAPTER_SUFFIXES):
            peft_key = PEFT_PREFIX + to_hf(key)
        elif key[: -len(".bias")] in layers:  # a bias of an adapted layer: PEFT's base_layer
            peft_key = (
                f"{PEFT_PREFIX}{_hf_module_name(key[: -len('.bias')], key_map)}.base_layer.bias"
            )
        else:
            peft_key = PEFT_PREFIX + key_map(key)
        tensors[peft_key] = value.contiguous()
    if adapted:
        config = layers[adapted[0]].adapter_config(adapter_name)
    else:
        assert stacked is not None  # adapter_state_dict raised if the adapter were nowhere
        config = stacked.config
    adapter_config = to_peft_config(
        config,
        peft_target_modules(model, adapted, key_map) if adapted else [],
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
        target_parameters=target_parameters,
    )
    return tensors, adapter_config


def _native_names(model: nn.Module, key_map: KeyMap) -> tuple[dict[str, str], dict[str, str]]:
    """HF module name -> native linear name, and HF bias key -> native bias key."""
    modules: dict[str, str] = {}
    for name in linear_module_names(model):
        try:
            modules[_hf_module_name(name, key_map)] = name
        except (KeyError, ValueError):
            continue
    biases: dict[str, str] = {}
    for name, _ in model.named_parameters():
        if name == "bias" or name.endswith(".bias"):
            try:
                biases[key_map(name)] = name
            except (KeyError, ValueError):
                continue
    return modules, biases


def load_peft_adapter(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    adapter_config: AdapterConfigLike,
    *,
    key_map: KeyMap | None = None,
    adapter_name: str = "default",
    freeze_base: bool = True,
    source: str | None = None,
) -> list[str]:
    """Add the adapter a PEFT directory holds to `model` and load its tensors; it becomes active.

    The layers adapted are exactly those the tensors name (after mapping back through `key_map`);
    stacked expert parameters are those the config's `target_parameters` select that have tensors.

    Args:
        model: The native model (base weights already loaded).
        state_dict: Contents of `adapter_model.safetensors` (PEFT keys).
        adapter_config: Contents of `adapter_config.json`, or its path (or its directory).
        key_map: Native -> HF parameter-key function used for the base (None: identity).
        adapter_name: Name to give the adapter here.
        freeze_base: Freeze all but the adapter afterwards.
        source: Name of the config file for error messages (see `from_peft_config`).

    Returns:
        Native names of the adapted layers, then of the adapted stacked parameters.

    Raises:
        AdapterMismatchError: a tensor names no linear layer of the model, or its shape does not
            fit the layer (an adapter trained on another base); the model is left unchanged.
    """
    key_map = key_map or _identity
    raw_config, where = _config_and_source(adapter_config, source)
    config = from_peft_config(raw_config, source=where)
    base = raw_config.get("base_model_name_or_path")
    trained_on = f" ({where} says base_model_name_or_path={base!r})" if base else ""
    if any(adapter_name in m.adapter_names for m in lora_modules(model).values()):
        raise ValueError(
            f"the model already has an adapter named {adapter_name!r}; pass another adapter_name "
            "or delete_adapter() it first"
        )
    hf_to_module, hf_to_bias = _native_names(model, key_map)
    modules = dict(model.named_modules())
    native, stacked = stacked_from_peft(
        model, state_dict, tuple(config.target_parameters), key_map, config.r
    )
    stacked_keys = peft_keys_of(model, stacked, key_map)
    for key, value in sorted(state_dict.items()):
        if key in stacked_keys:
            continue
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"PEFT adapter key {key!r} does not start with {PEFT_PREFIX!r}")
        hf_key = key[len(PEFT_PREFIX) :]
        if hf_key.endswith(".lora_magnitude_vector.weight"):  # how some PEFT versions name it
            hf_key = hf_key[: -len(".weight")]
        suffix = next((s for s in ADAPTER_SUFFIXES if hf_key.endswith("." + s)), None)
        if suffix is None and hf_key.endswith(".base_layer.bias"):
            suffix = "base_layer.bias"
        if suffix is not None:
            hf_module = hf_key[: -len(suffix) - 1]
            if hf_module not in hf_to_module:
                close = closest_names(hf_module, hf_to_module)
                raise AdapterMismatchError(
                    f"PEFT adapter key {key!r} targets {hf_module!r}, which is no linear layer "
                    f"(nn.Linear) of the model after key_map{trained_on}; closest: {close}"
                )
            if suffix != "base_layer.bias":
                layer = modules[hf_to_module[hf_module]]
                assert isinstance(layer, nn.Linear)  # linear_module_names lists nothing else
                _check_factor_shape(key, value, suffix, layer, hf_module, trained_on)
            native_suffix = "bias" if suffix == "base_layer.bias" else suffix
            native[f"{hf_to_module[hf_module]}.{native_suffix}"] = value
        elif hf_key in hf_to_bias:
            native[hf_to_bias[hf_key]] = value
        else:
            raise ValueError(
                f"PEFT adapter key {key!r} matches no adapter tensor or bias of the model"
            )
    targets = sorted(
        {k[: -len(".lora_A.weight")] for k in native if k.endswith(".lora_A.weight")},
        key=list(hf_to_module.values()).index,
    )
    if not targets and not stacked:
        raise ValueError("PEFT adapter state dict has no '*.lora_A.weight' tensor")
    for fqn in targets:
        rank = native[f"{fqn}.lora_A.weight"].shape[0]
        if rank != config.r:
            raise ValueError(
                f"{fqn}.lora_A.weight has rank {rank} but adapter_config.json says r={config.r}"
            )
    exact = tuple(REGEX_PREFIX + re.escape(t) for t in targets)
    exact_params = tuple(REGEX_PREFIX + re.escape(t) for t in stacked)
    # The saved factors replace any init; PiSSA must not rewrite the base weight again here.
    load_config = dataclasses.replace(
        config, targets=exact, exclude=(), init="default", target_parameters=exact_params
    )
    apply_lora(model, load_config, adapter_name, activate=True, freeze_base=freeze_base)
    load_adapter_state_dict(model, native, adapter_name)
    return targets + stacked
