"""The model families GGUF import/export handles: GGUF architecture <-> HF model type, and the
llama.cpp storage conventions of each.

| GGUF arch | HF model_type | HF class | stored differently from HF |
| --- | --- | --- | --- |
| llama | llama | LlamaForCausalLM | Q/K rows permuted (rotary pairs interleaved) |
| llama | mistral | MistralForCausalLM | as llama (llama.cpp writes Mistral as `llama`) |
| qwen2 | qwen2 | Qwen2ForCausalLM | - |
| qwen3 | qwen3 | Qwen3ForCausalLM | - |
| phi3 | phi3 | Phi3ForCausalLM | - (fused qkv_proj / gate_up_proj kept) |
| gemma2 | gemma2 | Gemma2ForCausalLM | norm weights stored +1 |
| gemma3 | gemma3_text | Gemma3ForCausalLM | norm weights stored +1 |

A GGUF whose `general.architecture` is `mistral` (written by tools other than llama.cpp) is read as
Mistral with the llama layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from tune.checkpoint.gguf.errors import UnsupportedGgufError

_ATTN = tuple(f"self_attn.{p}_proj.weight" for p in ("q", "k", "v", "o"))
_MLP = tuple(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down"))
_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
_QK_NORM = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
_GEMMA_NORMS = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight",
)
_PHI3_MLP = ("mlp.gate_up_proj.weight", "mlp.down_proj.weight")
_ATTN_BIAS = tuple(f"self_attn.{p}_proj.bias" for p in ("q", "k", "v", "o"))
_MLP_BIAS = tuple(f"mlp.{p}_proj.bias" for p in ("gate", "up", "down"))


@dataclass(frozen=True)
class GgufArchitecture:
    """How one model family is stored in GGUF.

    Attributes:
        gguf_arch: `general.architecture` written on export.
        model_type: HF `model_type`.
        hf_class: HF `architectures[0]`.
        tensor_names_arch: the gguf `MODEL_ARCH` name whose tensor names apply.
        block_params: HF parameter names under `model.layers.{i}.` that every block has.
        optional_block_params: ones a block may have (biases), per the checkpoint.
        permute_qk: llama.cpp interleaves the rotary halves of the Q/K rows.
        norm_offset: added to norm weights in GGUF (gemma: 1, as its RMSNorm scales by 1 + w).
        swa_pattern: llama.cpp's default layer pattern: every n-th layer full attention, the others
            sliding-window; None: no sliding window.
        partial_rotary: the HF config has `partial_rotary_factor` (rope.dimension_count < head_dim).
        untied_output: llama.cpp can hold a separate `output.weight` (an untied lm_head).
        activation: (config key, value) of the MLP activation.
    """

    gguf_arch: str
    model_type: str
    hf_class: str
    tensor_names_arch: str
    block_params: tuple[str, ...]
    optional_block_params: tuple[str, ...] = ()
    permute_qk: bool = False
    norm_offset: float = 0.0
    swa_pattern: int | None = None
    partial_rotary: bool = False
    untied_output: bool = True
    activation: tuple[str, str] = ("hidden_act", "silu")


ARCHITECTURES: dict[str, GgufArchitecture] = {
    "llama": GgufArchitecture(
        "llama",
        "llama",
        "LlamaForCausalLM",
        "llama",
        _NORMS + _ATTN + _MLP,
        _ATTN_BIAS + _MLP_BIAS,
        permute_qk=True,
    ),
    "mistral": GgufArchitecture(
        "llama",
        "mistral",
        "MistralForCausalLM",
        "llama",
        _NORMS + _ATTN + _MLP,
        permute_qk=True,
    ),
    "qwen2": GgufArchitecture(
        "qwen2",
        "qwen2",
        "Qwen2ForCausalLM",
        "qwen2",
        _NORMS + _ATTN + _ATTN_BIAS[:3] + _MLP,
    ),
    "qwen3": GgufArchitecture(
        "qwen3",
        "qwen3",
        "Qwen3ForCausalLM",
        "qwen3",
        _NORMS + _ATTN + _QK_NORM + _MLP,
        _ATTN_BIAS,
    ),
    "phi3": GgufArchitecture(
        "phi3",
        "phi3",
        "Phi3ForCausalLM",
        "phi3",
        (*_NORMS, "self_attn.qkv_proj.weight", "self_attn.o_proj.weight", *_PHI3_MLP),
        partial_rotary=True,
    ),
    "gemma2": GgufArchitecture(
        "gemma2",
        "gemma2",
        "Gemma2ForCausalLM",
        "gemma2",
        _GEMMA_NORMS + _ATTN + _MLP,
        norm_offset=1.0,
        swa_pattern=2,
        untied_output=False,
        activation=("hidden_activation", "gelu_pytorch_tanh"),
    ),
    "gemma3_text": GgufArchitecture(
        "gemma3",
        "gemma3_text",
        "Gemma3ForCausalLM",
        "gemma3",
        _GEMMA_NORMS + _ATTN + _QK_NORM + _MLP,
        norm_offset=1.0,
        swa_pattern=6,
        activation=("hidden_activation", "gelu_pytorch_tanh"),
    ),
}
"""HF model_type -> its GGUF layout."""

_BY_GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}
_BY_GGUF_ARCH.update({"phi3": "phi3", "gemma2": "gemma2", "gemma3": "gemma3_text"})
# HF model_type spellings that mean the same family.
_MODEL_TYPE_ALIASES = {"gemma3": "gemma3_text"}


def supported_gguf_architectures() -> list[str]:
    """`general.architecture` values that can be imported."""
    return sorted(_BY_GGUF_ARCH)


def supported_model_types() -> list[str]:
    """HF `model_type` values that can be exported."""
    return sorted(ARCHITECTURES)


def architecture_for_gguf(arch: str, where: str) -> GgufArchitecture:
    """The family of a GGUF `general.architecture`; an error lists the supported ones."""
    if arch not in _BY_GGUF_ARCH:
        raise UnsupportedGgufError(
            f"{where}: general.architecture {arch!r} is not supported; supported: "
            f"{supported_gguf_architectures()}"
        )
    return ARCHITECTURES[_BY_GGUF_ARCH[arch]]


def architecture_for_model_type(model_type: object, where: str) -> GgufArchitecture:
    """The GGUF layout of an HF `model_type`; an error lists the supported ones."""
    key = _MODEL_TYPE_ALIASES.get(str(model_type), str(model_type))
    if key not in ARCHITECTURES:
        raise UnsupportedGgufError(
            f"{where}: model_type {model_type!r} cannot be exported to GGUF; supported: "
            f"{supported_model_types()}"
        )
    return ARCHITECTURES[key]
