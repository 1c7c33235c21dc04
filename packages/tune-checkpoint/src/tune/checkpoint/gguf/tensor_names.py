"""HF <-> GGUF tensor names, from the gguf package's own table (`gguf.get_tensor_name_map`).

The gguf table maps many HF spellings to one GGUF name, so the GGUF -> HF direction is built from
the parameter names the HF class has (`GgufArchitecture.block_params`), mapped forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf

from tune.checkpoint.errors import first_keys
from tune.checkpoint.gguf.architectures import GgufArchitecture
from tune.checkpoint.gguf.errors import UnsupportedGgufError

EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
GGUF_OUTPUT = "output.weight"
GGUF_EMBEDDING = "token_embd.weight"
# llama.cpp tensors that carry settings rather than weights (handled by the config conversion).
ROPE_FREQS = "rope_freqs.weight"
ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")

_ARCH_BY_NAME = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


def _name_map(family: GgufArchitecture, n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(_ARCH_BY_NAME[family.tensor_names_arch], n_blocks)


def hf_to_gguf_names(
    family: GgufArchitecture, n_blocks: int, hf_names: Iterable[str], where: str
) -> dict[str, str]:
    """HF parameter name -> llama.cpp tensor name for every name in `hf_names`.

    Raises:
        UnsupportedGgufError: a name llama.cpp has no tensor for (names it), or two HF names
            that would land on one GGUF name.
    """
    name_map = _name_map(family, n_blocks)
    out: dict[str, str] = {}
    unmapped = []
    for hf_name in hf_names:
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            unmapped.append(hf_name)
        else:
            out[hf_name] = gguf_name
    if unmapped:
        raise UnsupportedGgufError(
            f"{where}: no llama.cpp {family.gguf_arch!r} tensor for {first_keys(unmapped)}"
        )
    seen: dict[str, str] = {}
    for hf_name, gguf_name in out.items():
        if gguf_name in seen:
            raise UnsupportedGgufError(
                f"{where}: {seen[gguf_name]!r} and {hf_name!r} both map to GGUF {gguf_name!r}"
            )
        seen[gguf_name] = hf_name
    return out


def candidate_hf_names(family: GgufArchitecture, n_blocks: int) -> tuple[list[str], list[str]]:
    """(required, optional) HF parameter names of a model of this family with `n_blocks` blocks."""
    required = [EMBEDDING, FINAL_NORM]
    optional = [LM_HEAD] if family.untied_output else []
    for i in range(n_blocks):
        required += [f"model.layers.{i}.{p}" for p in family.block_params]
        optional += [f"model.layers.{i}.{p}" for p in family.optional_block_params]
    return required, optional


def gguf_to_hf_names(
    family: GgufArchitecture, n_blocks: int, gguf_names: Iterable[str], where: str
) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name for the weights of a GGUF file.

    Setting tensors (`rope_freqs.weight`, ...) are left out; the config conversion reads them.

    Raises:
        UnsupportedGgufError: a tensor with no HF counterpart in this family (names it), or a
            weight the family needs that the file lacks.
    """
    required, optional = candidate_hf_names(family, n_blocks)
    forward = hf_to_gguf_names(family, n_blocks, required + optional, where)
    backward = {g: h for h, g in forward.items()}
    names = [n for n in gguf_names if n != ROPE_FREQS and n not in ROPE_FACTORS]
    unknown = [n for n in names if n not in backward]
    if unknown:
        raise UnsupportedGgufError(
            f"{where}: GGUF tensors with no {family.hf_class} counterpart: {first_keys(unknown)}"
        )
    present = set(names)
    missing = [forward[h] for h in required if forward[h] not in present]
    if missing:
        raise UnsupportedGgufError(
            f"{where}: a {family.gguf_arch!r} model with {n_blocks} blocks needs tensors the file "
            f"lacks: {first_keys(missing)}"
        )
    return {n: backward[n] for n in names}
