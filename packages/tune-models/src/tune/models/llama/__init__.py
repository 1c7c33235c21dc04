"""Llama 3.1 / 3.2 / 3.3 (``model_type`` "llama")."""

from tune.models.hf_config import ConfigFields
from tune.models.key_map import LLAMA_KEY_MAP
from tune.models.llama.builder import build_llama, default_rotary, llama_block
from tune.models.llama.config import LlamaConfig
from tune.models.llama.sizes import LLAMA_SIZES, tiny_llama_config
from tune.models.registry import ModelFamily, register_family


def _from_hf(f: ConfigFields) -> LlamaConfig:
    return LlamaConfig.from_hf(f)


LLAMA = register_family(
    ModelFamily(
        name="llama",
        model_types=("llama",),
        config_from_hf=_from_hf,
        build=build_llama,
        key_map=LLAMA_KEY_MAP,
        named_sizes=LLAMA_SIZES,
    )
)

__all__ = [
    "LLAMA",
    "LLAMA_SIZES",
    "LlamaConfig",
    "build_llama",
    "default_rotary",
    "llama_block",
    "tiny_llama_config",
]
