"""HF <-> native state-dict key maps per family, as plain functions both ways."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from tune.models.build import ConfigLike, resolve_config
from tune.models.registry import family_for_model_type

StateDict = dict[str, Tensor]


def _family(config: ConfigLike):  # type: ignore[no-untyped-def]
    if isinstance(config, str):
        try:
            return family_for_model_type(config)
        except ValueError:
            pass
    return resolve_config(config)[0]


def hf_to_native_key(config: ConfigLike) -> Callable[[str], str]:
    """``str -> str`` renaming an HF key to the native key (one-to-one keys only).

    Args:
        config: a model_type string, HF config (dict/path), family config or native model.

    Phi-3's fused ``qkv_proj``/``gate_up_proj`` keys and the MoE families' per-expert keys have
    no single native key: use ``convert_hf_to_native`` for whole state dicts.
    """
    return _family(config).key_map.hf_to_native


def native_to_hf_key(config: ConfigLike) -> Callable[[str], str]:
    """``str -> str`` renaming a native key to the (unfused) HF key; see ``hf_to_native_key``."""
    return _family(config).key_map.native_to_hf


def convert_hf_to_native(state_dict: StateDict, config: ConfigLike) -> StateDict:
    """An HF state dict renamed (and unfused) to native keys, ready for ``load_state_dict``.

    With tied embeddings and no ``lm_head.weight``, ``output.weight`` is the embedding tensor.

    Args:
        state_dict: HF keys -> tensors.
        config: HF config (dict/path), family config or native model.
    """
    family, cfg = resolve_config(config)
    if family.split_fused is not None:
        state_dict = family.split_fused(state_dict, cfg)
    rename = family.key_map.hf_to_native
    out = {rename(k): v for k, v in state_dict.items()}
    if cfg.tie_word_embeddings and "output.weight" not in out and "tok_embeddings.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def convert_native_to_hf(state_dict: StateDict, config: ConfigLike) -> StateDict:
    """A native state dict renamed (and fused, for Phi-3) to HF keys.

    With tied embeddings ``output.weight`` is dropped (HF stores the embedding once).

    Args:
        state_dict: native keys -> tensors.
        config: HF config (dict/path), family config or native model.
    """
    family, cfg = resolve_config(config)
    rename = family.key_map.native_to_hf
    out = {
        rename(k): v
        for k, v in state_dict.items()
        if not (cfg.tie_word_embeddings and k == "output.weight")
    }
    if family.fuse_split is not None:
        out = family.fuse_split(out, cfg)
    return out


def state_dict_converters(
    config: ConfigLike,
) -> tuple[Callable[[StateDict], StateDict], Callable[[StateDict], StateDict]]:
    """(hf_to_native, native_to_hf) functions over whole state dicts, bound to ``config``."""
    _, cfg = resolve_config(config)

    def to_native(state_dict: StateDict) -> StateDict:
        return convert_hf_to_native(state_dict, cfg)

    def to_hf(state_dict: StateDict) -> StateDict:
        return convert_native_to_hf(state_dict, cfg)

    return to_native, to_hf
