"""Model families register here by HF ``model_type``; the builders look them up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from tune.models.decoder_config import DecoderConfig
from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.key_map import KeyMap
from tune.models.transformer import Transformer

StateDictFn = Callable[[dict[str, Tensor], Any], dict[str, Tensor]]


@dataclass(frozen=True)
class ModelFamily:
    """What a family folder contributes.

    Args:
        name: family name ("llama", "gemma2", ...).
        model_types: HF ``model_type`` values it builds.
        config_from_hf: HF config fields -> the family's frozen config dataclass.
        build: family config -> ``Transformer``.
        key_map: one-to-one HF <-> native key renames.
        split_fused: optional HF checkpoint state dict -> the HF layout ``key_map`` renames
            one-to-one (still HF-named, e.g. Phi-3 ``qkv_proj`` -> ``q_proj``/``k_proj``/
            ``v_proj``; MoE per-expert tensors -> stacked ``experts.gate_up_proj``).
        fuse_split: optional inverse of ``split_fused`` (back to the checkpoint layout).
        named_sizes: size name -> published ``config.json`` fields.
    """

    name: str
    model_types: tuple[str, ...]
    config_from_hf: Callable[[ConfigFields], DecoderConfig]
    build: Callable[[Any], Transformer]
    key_map: KeyMap
    split_fused: StateDictFn | None = None
    fuse_split: StateDictFn | None = None
    named_sizes: dict[str, dict[str, Any]] = field(default_factory=dict)


_FAMILIES: dict[str, ModelFamily] = {}
_BY_MODEL_TYPE: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family; its model types and size names must be new."""
    for model_type in family.model_types:
        if model_type in _BY_MODEL_TYPE:
            raise ValueError(
                f"model_type {model_type!r} is already registered by family "
                f"{_BY_MODEL_TYPE[model_type].name!r}"
            )
    taken = {size for fam in _FAMILIES.values() for size in fam.named_sizes}
    clash = taken & set(family.named_sizes)
    if clash:
        raise ValueError(f"named sizes {sorted(clash)} are already registered")
    _FAMILIES[family.name] = family
    for model_type in family.model_types:
        _BY_MODEL_TYPE[model_type] = family
    return family


def supported_model_types() -> list[str]:
    """Every HF ``model_type`` that can be built."""
    return sorted(_BY_MODEL_TYPE)


def family_for_model_type(model_type: str, source: str = "config") -> ModelFamily:
    """The family that builds ``model_type``; an error listing the supported ones otherwise."""
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise UnsupportedConfigError(
            f"{source}: model_type {model_type!r} is not supported; supported: "
            f"{supported_model_types()}"
        )
    return family


def families() -> dict[str, ModelFamily]:
    """Registered families by name."""
    return dict(_FAMILIES)
