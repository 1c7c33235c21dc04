"""GGUF import and export: llama.cpp / Ollama files <-> HF checkpoint directories.

    from tune.checkpoint.gguf import convert_gguf_to_hf_dir, export_gguf

    convert_gguf_to_hf_dir("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-hf")  # dequantized, HF names
    export_gguf("out/model-hf", "out/model.q8_0.gguf", file_type="q8_0")     # + an Ollama Modelfile

Families: llama (SmolLM2, Llama 3.x), mistral (stored as llama), qwen2, qwen3, phi3, gemma2,
gemma3 (text). Needs the optional `gguf` package: `pip install tune-checkpoint[gguf]`.
"""

try:
    import gguf as _gguf  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "tune.checkpoint.gguf needs the 'gguf' package: pip install tune-checkpoint[gguf]"
    ) from err

from tune.checkpoint.gguf.architectures import (
    ARCHITECTURES,
    GgufArchitecture,
    supported_gguf_architectures,
    supported_model_types,
)
from tune.checkpoint.gguf.cache import cached_hf_dir, default_cache_dir
from tune.checkpoint.gguf.config_import import hf_config_from_gguf
from tune.checkpoint.gguf.errors import GgufFormatError, UnsupportedGgufError
from tune.checkpoint.gguf.export import export_gguf, write_gguf
from tune.checkpoint.gguf.import_hf import convert_gguf_to_hf_dir, gguf_to_hf
from tune.checkpoint.gguf.modelfile import write_ollama_modelfile
from tune.checkpoint.gguf.quant_types import supported_file_types
from tune.checkpoint.gguf.reader import GgufContents, read_gguf, read_gguf_metadata
from tune.checkpoint.gguf.tensor_transforms import permute_heads, unpermute_heads
from tune.checkpoint.gguf.tokenizer_export import add_tokenizer_metadata
from tune.checkpoint.gguf.tokenizer_import import hf_tokenizer_files_from_gguf

__all__ = [
    "ARCHITECTURES",
    "GgufArchitecture",
    "GgufContents",
    "GgufFormatError",
    "UnsupportedGgufError",
    "add_tokenizer_metadata",
    "cached_hf_dir",
    "convert_gguf_to_hf_dir",
    "default_cache_dir",
    "export_gguf",
    "gguf_to_hf",
    "hf_config_from_gguf",
    "hf_tokenizer_files_from_gguf",
    "permute_heads",
    "read_gguf",
    "read_gguf_metadata",
    "supported_file_types",
    "supported_gguf_architectures",
    "supported_model_types",
    "unpermute_heads",
    "write_gguf",
    "write_ollama_modelfile",
]
