"""GGUF metadata -> an HF `config.json` (transformers 5 spelling, with the transformers 4 keys too).

| GGUF key (`<arch>.` prefix) | HF key |
| --- | --- |
| embedding_length | hidden_size |
| feed_forward_length | intermediate_size |
| block_count | num_hidden_layers |
| attention.head_count / head_count_kv | num_attention_heads / num_key_value_heads |
| attention.key_length (else rope.dimension_count for llama, else hidden / heads) | head_dim |
| rope.dimension_count / head_dim (phi3) | partial_rotary_factor |
| rope.freq_base (+ rope.freq_base_swa for gemma3) | rope_parameters.rope_theta |
| rope.scaling.type / factor / original_context_length, `rope_freqs.weight` | rope_parameters |
| attention.layer_norm_rms_epsilon | rms_norm_eps |
| context_length | max_position_embeddings |
| token_embd.weight rows | vocab_size |
| attention.sliding_window, attention.sliding_window_pattern | sliding_window, layer_types |
| attn_logit_softcapping / final_logit_softcapping | the same names (gemma) |
| no `output.weight` | tie_word_embeddings |
| tokenizer.ggml.bos/eos/padding_token_id | bos/eos/pad_token_id |

Gemma's `query_pre_attn_scalar` is not stored: llama.cpp uses head_dim, or hidden / heads for the
27B sizes (46 layers for Gemma 2, 62 for Gemma 3), and so does this import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gguf
import torch

from tune.checkpoint.gguf.architectures import GgufArchitecture, architecture_for_gguf
from tune.checkpoint.gguf.errors import GgufFormatError, UnsupportedGgufError
from tune.checkpoint.gguf.rope_scaling import llama3_params_from_divisors
from tune.checkpoint.gguf.tensor_names import GGUF_EMBEDDING, GGUF_OUTPUT, ROPE_FACTORS, ROPE_FREQS

_REQUIRED = object()
# Layer counts of the Gemma sizes where llama.cpp scales queries by hidden / heads.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_GEMMA2_SOFTCAPS = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
_GEMMA2_DEFAULT_WINDOW = 4096


class _Meta:
    """Typed access to `<arch>.` metadata keys; errors name the file and key."""

    def __init__(self, metadata: Mapping[str, Any], arch: str, where: str) -> None:
        self.data, self.arch, self.where = metadata, arch, where

    def key(self, template: str) -> str:
        return template.format(arch=self.arch)

    def get(self, template: str, default: Any = None) -> Any:
        key = self.key(template)
        value = self.data.get(key, _REQUIRED)
        if value is _REQUIRED:
            if default is _REQUIRED:
                raise GgufFormatError(f"{self.where}: metadata key {key!r} is missing")
            return default
        return value

    def integer(self, template: str, default: Any = _REQUIRED) -> Any:
        value = self.get(template, default)
        if isinstance(value, list):  # per-layer values: HF configs hold one
            if not value or any(v != value[0] for v in value):
                raise UnsupportedGgufError(
                    f"{self.where}: {self.key(template)} differs between layers ({value[:8]}...); "
                    "HF configs of this family hold one value"
                )
            value = value[0]
        if value is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise GgufFormatError(
                f"{self.where}: {self.key(template)} = {value!r}, expected an integer"
            )
        return value

    def number(self, template: str, default: Any = _REQUIRED) -> Any:
        value = self.get(template, default)
        if value is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GgufFormatError(
                f"{self.where}: {self.key(template)} = {value!r}, expected a number"
            )
        return float(value)


K = gguf.Keys


def _head_dim(meta: _Meta, family: GgufArchitecture, hidden: int, heads: int) -> tuple[int, int]:
    """(head_dim, rotary dims)."""
    key_length = meta.integer(K.Attention.KEY_LENGTH, None)
    rope_dims = meta.integer(K.Rope.DIMENSION_COUNT, None)
    if key_length is None:
        key_length = rope_dims if (family.permute_qk and rope_dims) else hidden // heads
    value_length = meta.integer(K.Attention.VALUE_LENGTH, None)
    if value_length is not None and value_length != key_length:
        raise UnsupportedGgufError(
            f"{meta.where}: {meta.key(K.Attention.VALUE_LENGTH)} = {value_length} differs from "
            f"the key length {key_length}; {family.hf_class} has one head_dim"
        )
    rotary = rope_dims if rope_dims is not None else key_length
    if rotary != key_length and not family.partial_rotary:
        raise UnsupportedGgufError(
            f"{meta.where}: {meta.key(K.Rope.DIMENSION_COUNT)} = {rotary} differs from head_dim "
            f"{key_length}; {family.hf_class} rotates the whole head"
        )
    return key_length, rotary


def _rope_parameters(
    meta: _Meta, theta: float, head_dim: int, tensors: Mapping[str, Any]
) -> dict[str, Any]:
    """The HF `rope_parameters` of the full-attention layers."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    kind = meta.get(K.Rope.SCALING_TYPE, "none")
    factor = meta.number(K.Rope.SCALING_FACTOR, None)
    original = meta.integer(K.Rope.SCALING_ORIG_CTX_LEN, None)
    if ROPE_FREQS in tensors:
        divisors = tensors[ROPE_FREQS]
        if isinstance(divisors, torch.Tensor) and bool((divisors == 1).all()):
            return params
        solved = (
            llama3_params_from_divisors(divisors, head_dim, theta, original)
            if isinstance(divisors, torch.Tensor)
            else None
        )
        if solved is None:
            raise UnsupportedGgufError(
                f"{meta.where}: tensor {ROPE_FREQS!r} holds per-frequency RoPE divisors that do "
                "not match Llama 3 rope scaling (factor, low/high_freq_factor); cannot express "
                "them as an HF rope_parameters"
            )
        return solved
    present = [n for n in ROPE_FACTORS if n in tensors]
    if kind == "longrope" or present:
        raise UnsupportedGgufError(
            f"{meta.where}: LongRoPE scaling ({meta.key(K.Rope.SCALING_TYPE)} = {kind!r}, "
            f"tensors {present}) is not supported by this import"
        )
    if kind in ("none", "linear") and (factor is None or factor in (0.0, 1.0)):
        return params
    if kind == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    if kind == "yarn" and factor is not None:
        for unsupported in (K.Rope.SCALING_ATTN_FACTOR, K.Rope.SCALING_YARN_ATTN_FACTOR):
            if meta.get(unsupported) not in (None, 1.0):
                raise UnsupportedGgufError(
                    f"{meta.where}: {meta.key(unsupported)} = {meta.get(unsupported)!r} has no "
                    "HF yarn counterpart in this import"
                )
        params = {"rope_type": "yarn", "rope_theta": theta, "factor": factor}
        if original is not None:
            params["original_max_position_embeddings"] = original
        for key, hf_key in (
            (K.Rope.SCALING_YARN_BETA_FAST, "beta_fast"),
            (K.Rope.SCALING_YARN_BETA_SLOW, "beta_slow"),
        ):
            if (value := meta.number(key, None)) is not None:
                params[hf_key] = value
        return params
    raise UnsupportedGgufError(
        f"{meta.where}: {meta.key(K.Rope.SCALING_TYPE)} = {kind!r} (factor {factor}) is not "
        "supported; supported: none, linear, yarn, and Llama 3 rope_freqs"
    )


def _layer_types(meta: _Meta, family: GgufArchitecture, layers: int, window: int | None) -> list:
    if window is None or family.swa_pattern is None:
        return ["full_attention"] * layers
    pattern = meta.get(K.Attention.SLIDING_WINDOW_PATTERN, family.swa_pattern)
    if isinstance(pattern, list):
        if len(pattern) != layers:
            raise GgufFormatError(
                f"{meta.where}: {meta.key(K.Attention.SLIDING_WINDOW_PATTERN)} has "
                f"{len(pattern)} entries for {layers} layers"
            )
        swa = [bool(p) for p in pattern]
    else:
        # llama.cpp: layer i uses the window unless it is the last of each group of `pattern`.
        swa = [pattern > 1 and i % pattern < pattern - 1 for i in range(layers)]
    return ["sliding_attention" if s else "full_attention" for s in swa]


def _gemma_settings(
    meta: _Meta, family: GgufArchitecture, config: dict[str, Any], rope: dict[str, Any]
) -> None:
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    is_27b = _GEMMA_27B_LAYERS.get(family.gguf_arch) == layers
    config["query_pre_attn_scalar"] = (
        config["hidden_size"] // heads if is_27b else config["head_dim"]
    )
    window = meta.integer(K.Attention.SLIDING_WINDOW, None)
    if family.gguf_arch == "gemma2":
        window = window or _GEMMA2_DEFAULT_WINDOW
        for name, default in _GEMMA2_SOFTCAPS.items():
            config[name] = meta.number(f"{{arch}}.{name}", default)
        config["rope_parameters"] = rope
        config["rope_theta"] = rope["rope_theta"]
    else:
        window = window or None
        config["attn_logit_softcapping"] = None
        config["final_logit_softcapping"] = meta.number(K.LLM.FINAL_LOGIT_SOFTCAPPING, None)
        local_theta = meta.number(K.Rope.FREQ_BASE_SWA, 10000.0)
        config["rope_parameters"] = {
            "full_attention": rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
        }
        config["rope_theta"] = rope["rope_theta"]
        config["rope_local_base_freq"] = local_theta
        if rope["rope_type"] != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config["sliding_window"] = window
    config["layer_types"] = _layer_types(meta, family, layers, window)


def hf_config_from_gguf(
    metadata: Mapping[str, Any],
    tensors: Mapping[str, Any],
    where: str,
) -> tuple[dict[str, Any], GgufArchitecture]:
    """The HF `config.json` content of a GGUF model, and its family.

    Args:
        metadata: `GgufContents.metadata`.
        tensors: GGUF name -> tensor (or anything with a `.shape`); `token_embd.weight` gives
            the vocabulary size, `output.weight` untied embeddings, `rope_freqs.weight` the
            Llama 3 rope scaling.
        where: the file, for error messages.

    Raises:
        UnsupportedGgufError: an unknown architecture (lists the supported ones) or a setting
            that has no HF counterpart (names the key or tensor).
        GgufFormatError: a required key is missing or has the wrong type.
    """
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise GgufFormatError(f"{where}: no general.architecture string in the metadata")
    family = architecture_for_gguf(arch, where)
    meta = _Meta(metadata, arch, where)
    if GGUF_EMBEDDING not in tensors:
        raise UnsupportedGgufError(f"{where}: the file has no {GGUF_EMBEDDING!r} tensor")
    hidden = meta.integer(K.LLM.EMBEDDING_LENGTH)
    heads = meta.integer(K.Attention.HEAD_COUNT)
    kv_heads = meta.integer(K.Attention.HEAD_COUNT_KV, None) or heads
    head_dim, rotary = _head_dim(meta, family, hidden, heads)
    theta = meta.number(K.Rope.FREQ_BASE, 10000.0)
    rope = _rope_parameters(meta, theta, rotary, tensors)
    act_key, act = family.activation
    config: dict[str, Any] = {
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "hidden_size": hidden,
        "intermediate_size": meta.integer(K.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": meta.integer(K.LLM.BLOCK_COUNT),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": meta.integer(K.LLM.CONTEXT_LENGTH),
        "rms_norm_eps": meta.number(K.Attention.LAYERNORM_RMS_EPS),
        "vocab_size": int(tensors[GGUF_EMBEDDING].shape[0]),
        "tie_word_embeddings": GGUF_OUTPUT not in tensors,
        act_key: act,
        "rope_parameters": rope,
        "rope_theta": theta,
        "bos_token_id": metadata.get(K.Tokenizer.BOS_ID),
        "eos_token_id": metadata.get(K.Tokenizer.EOS_ID),
        "pad_token_id": metadata.get(K.Tokenizer.PAD_ID),
    }
    if rope["rope_type"] != "default":
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if family.model_type in ("llama", "qwen3"):
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    if family.model_type == "llama":
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    if family.model_type in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
        config["sliding_window"] = None
    if family.model_type == "mistral":
        config["sliding_window"] = meta.integer(K.Attention.SLIDING_WINDOW, None) or None
    if family.partial_rotary:
        config["partial_rotary_factor"] = rotary / head_dim
        rope["partial_rotary_factor"] = rotary / head_dim
    if family.model_type == "phi3":
        config["sliding_window"] = meta.integer(K.Attention.SLIDING_WINDOW, None) or None
        config["original_max_position_embeddings"] = meta.integer(
            K.Rope.SCALING_ORIG_CTX_LEN, config["max_position_embeddings"]
        )
    if family.norm_offset:
        _gemma_settings(meta, family, config, rope)
    return config, family
