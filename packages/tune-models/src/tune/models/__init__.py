"""tune.models: Transformer components, model families built from HF configs, key maps, TP plans, generation."""

# Importing the family folders registers them by HF model_type.
from tune.models import (  # noqa: F401
    deepseek_v3,
    gemma2,
    gemma3,
    gpt_oss,
    llama,
    mistral,
    mixtral,
    olmoe,
    phi3,
    qwen2,
    qwen2_moe,
    qwen3,
    qwen3_moe,
    smollm2,
)
from tune.models._version import __version__
from tune.models.attention import Attention, sink_attention, softcapped_attention
from tune.models.attention_mask import build_attention_mask
from tune.models.build import (
    build_from_hf_config,
    build_model,
    config_from_hf,
    resolve_config,
)
from tune.models.checkpoint_model import (
    CheckpointModel,
    model_from_checkpoint_dir,
    native_support_problem,
    resolve_implementation,
)
from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig, common_fields, layer_windows
from tune.models.deepseek_v3 import DeepseekV3Config
from tune.models.ep_plan import ep_plan, routed_expert_counts
from tune.models.gemma2 import Gemma2Config
from tune.models.gemma3 import Gemma3TextConfig
from tune.models.generation import generate, sample_next_token
from tune.models.gpt_oss import GptOssConfig
from tune.models.hf_config import ConfigFields, UnsupportedConfigError, load_hf_config
from tune.models.hf_keys import (
    convert_hf_to_native,
    convert_native_to_hf,
    hf_to_native_key,
    native_to_hf_key,
    state_dict_converters,
)
from tune.models.key_map import GEMMA_KEY_MAP, LLAMA_KEY_MAP, KeyMap
from tune.models.kv_cache import KVCache, cache_length, setup_kv_cache, teardown_kv_cache
from tune.models.llama import LlamaConfig
from tune.models.mistral import MistralConfig
from tune.models.mla_attention import MLAttention
from tune.models.mlp import GatedMLP
from tune.models.moe import (
    GroupedExperts,
    MoEFeedForward,
    RouterStats,
    clamped_swiglu,
    moe_experts_reference,
)
from tune.models.moe_decoder import MoEDecoderConfig, ProjectionRMSNorm, build_moe_decoder
from tune.models.moe_keys import (
    MIXTRAL_EXPERT_KEYS,
    MOE_KEY_MAP,
    QWEN_EXPERT_KEYS,
    ExpertKeyLayout,
    stack_experts,
    unstack_experts,
)
from tune.models.mxfp4 import dequantize_mxfp4
from tune.models.named_sizes import build_named_size, named_size_config, named_sizes
from tune.models.param_count import active_param_count, param_count
from tune.models.phi3 import Phi3Config
from tune.models.qwen2 import Qwen2Config
from tune.models.qwen3 import Qwen3Config
from tune.models.registry import ModelFamily, register_family, supported_model_types
from tune.models.rms_norm import RMSNorm
from tune.models.rotary import RopeSpec, RotaryEmbedding, apply_rotary
from tune.models.stopping import (
    Completion,
    StopRules,
    build_stop_rules,
    checkpoint_eos_ids,
    finish_completion,
)
from tune.models.tp_plan import tp_plan
from tune.models.transformer import Transformer, TransformerBlock

# Imports transformers only when a model is built (the optional extra `transformers`).
from tune.models.transformers_model import (
    TransformersCausalLM,
    build_transformers_model,
    transformers_checkpoint_model,
    transformers_missing,
)

__all__ = [
    "GEMMA_KEY_MAP",
    "LLAMA_KEY_MAP",
    "MIXTRAL_EXPERT_KEYS",
    "MOE_KEY_MAP",
    "QWEN_EXPERT_KEYS",
    "Attention",
    "CheckpointModel",
    "Completion",
    "ConfigFields",
    "DecoderConfig",
    "DeepseekV3Config",
    "ExpertKeyLayout",
    "GatedMLP",
    "Gemma2Config",
    "Gemma3TextConfig",
    "GptOssConfig",
    "GroupedExperts",
    "KVCache",
    "KeyMap",
    "LlamaConfig",
    "MLAttention",
    "MistralConfig",
    "MoEDecoderConfig",
    "MoEFeedForward",
    "ModelFamily",
    "Phi3Config",
    "ProjectionRMSNorm",
    "Qwen2Config",
    "Qwen3Config",
    "RMSNorm",
    "RopeSpec",
    "RotaryEmbedding",
    "RouterStats",
    "StopRules",
    "Transformer",
    "TransformerBlock",
    "TransformersCausalLM",
    "UnsupportedConfigError",
    "__version__",
    "active_param_count",
    "apply_rotary",
    "assemble_decoder",
    "build_attention_mask",
    "build_from_hf_config",
    "build_model",
    "build_moe_decoder",
    "build_named_size",
    "build_stop_rules",
    "build_transformers_model",
    "cache_length",
    "checkpoint_eos_ids",
    "clamped_swiglu",
    "common_fields",
    "config_from_hf",
    "convert_hf_to_native",
    "convert_native_to_hf",
    "dequantize_mxfp4",
    "ep_plan",
    "finish_completion",
    "generate",
    "hf_to_native_key",
    "layer_windows",
    "load_hf_config",
    "model_from_checkpoint_dir",
    "moe_experts_reference",
    "named_size_config",
    "named_sizes",
    "native_support_problem",
    "native_to_hf_key",
    "param_count",
    "register_family",
    "resolve_config",
    "resolve_implementation",
    "routed_expert_counts",
    "sample_next_token",
    "setup_kv_cache",
    "sink_attention",
    "softcapped_attention",
    "stack_experts",
    "state_dict_converters",
    "supported_model_types",
    "teardown_kv_cache",
    "tp_plan",
    "transformers_checkpoint_model",
    "transformers_missing",
    "unstack_experts",
]
