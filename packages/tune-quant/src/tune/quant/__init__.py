"""tune.quant: torchao post-training quantization, QAT, NF4 weights for QLoRA, float8 training.

Names are imported on first use (PEP 562): ``import tune.quant`` does not import torchao, and a
run that quantizes nothing never does. torchao's expected start-up warnings (CUDA extensions or
Triton absent) are logged at DEBUG.
"""

import importlib
from typing import TYPE_CHECKING, Any

from tune.quant._version import __version__

_EXPORTS = {
    "decode_int8": ("DECODE_SCHEMES", "Int8DecodeLinear", "quantize_for_decode"),
    "float8": ("FLOAT8_RECIPES", "apply_float8_training", "check_float8_supported"),
    "hf_config": (
        "hf_quantization_config",
        "read_hf_quantization_config",
        "write_hf_quantization_config",
    ),
    "memory": ("model_storage_bytes", "tensor_storage_bytes"),
    "module_filter": ("ADAPTER_PATTERNS", "ModuleFilter", "select_linear_modules"),
    "nf4": (
        "NF4Stats",
        "nf4_shardable",
        "nf4_storage_bytes",
        "to_nf4_linear_weights",
        "unshardable_nf4_params",
    ),
    "nf4_experts": (
        "NF4_EXPERT_SAFE_GLOBALS",
        "NF4ExpertTensor",
        "is_nf4_experts",
        "select_expert_params",
        "to_nf4_expert_weights",
        "to_nf4_experts",
    ),
    "ptq": ("is_quantized_weight", "quantize_model", "validate_modules_for_scheme"),
    "qat": ("convert_qat", "prepare_qat", "qat_prepared_modules"),
    "quantized_dir": (
        "MANIFEST_VERSION",
        "QUANTIZATION_MANIFEST",
        "QuantizationManifest",
        "QuantizedDirError",
        "check_quantized_dir",
        "is_quantized_dir",
        "load_quantized_dir",
        "read_quantization_manifest",
        "save_quantized_dir",
    ),
    "schemes": (
        "SCHEMES",
        "DeviceSupport",
        "QuantScheme",
        "UnsupportedSchemeError",
        "check_scheme_supported",
        "get_scheme",
    ),
    "serialization": (
        "load_quantized",
        "load_quantized_state_dict",
        "save_quantized",
        "to_safetensors_format",
    ),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}
# nf4 and nf4_experts import it when used
_WITHOUT_TORCHAO = frozenset({"decode_int8", "memory", "module_filter", "nf4", "nf4_experts"})

if TYPE_CHECKING:
    from tune.quant.decode_int8 import DECODE_SCHEMES, Int8DecodeLinear, quantize_for_decode
    from tune.quant.float8 import FLOAT8_RECIPES, apply_float8_training, check_float8_supported
    from tune.quant.hf_config import (
        hf_quantization_config,
        read_hf_quantization_config,
        write_hf_quantization_config,
    )
    from tune.quant.memory import model_storage_bytes, tensor_storage_bytes
    from tune.quant.module_filter import ADAPTER_PATTERNS, ModuleFilter, select_linear_modules
    from tune.quant.nf4 import (
        NF4Stats,
        nf4_shardable,
        nf4_storage_bytes,
        to_nf4_linear_weights,
        unshardable_nf4_params,
    )
    from tune.quant.nf4_experts import (
        NF4_EXPERT_SAFE_GLOBALS,
        NF4ExpertTensor,
        is_nf4_experts,
        select_expert_params,
        to_nf4_expert_weights,
        to_nf4_experts,
    )
    from tune.quant.ptq import is_quantized_weight, quantize_model, validate_modules_for_scheme
    from tune.quant.qat import convert_qat, prepare_qat, qat_prepared_modules
    from tune.quant.quantized_dir import (
        MANIFEST_VERSION,
        QUANTIZATION_MANIFEST,
        QuantizationManifest,
        QuantizedDirError,
        check_quantized_dir,
        is_quantized_dir,
        load_quantized_dir,
        read_quantization_manifest,
        save_quantized_dir,
    )
    from tune.quant.schemes import (
        SCHEMES,
        DeviceSupport,
        QuantScheme,
        UnsupportedSchemeError,
        check_scheme_supported,
        get_scheme,
    )
    from tune.quant.serialization import (
        load_quantized,
        load_quantized_state_dict,
        save_quantized,
        to_safetensors_format,
    )

else:

    def __getattr__(name: str) -> Any:
        module = _OWNER.get(name)
        if module is None:
            raise AttributeError(f"module 'tune.quant' has no attribute {name!r}")
        if module not in _WITHOUT_TORCHAO:
            from tune.quant._torchao import import_torchao

            import_torchao()
        value = getattr(importlib.import_module(f"tune.quant.{module}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_OWNER})


__all__ = [
    "ADAPTER_PATTERNS",
    "DECODE_SCHEMES",
    "FLOAT8_RECIPES",
    "MANIFEST_VERSION",
    "NF4_EXPERT_SAFE_GLOBALS",
    "QUANTIZATION_MANIFEST",
    "SCHEMES",
    "DeviceSupport",
    "Int8DecodeLinear",
    "ModuleFilter",
    "NF4ExpertTensor",
    "NF4Stats",
    "QuantScheme",
    "QuantizationManifest",
    "QuantizedDirError",
    "UnsupportedSchemeError",
    "__version__",
    "apply_float8_training",
    "check_float8_supported",
    "check_quantized_dir",
    "check_scheme_supported",
    "convert_qat",
    "get_scheme",
    "hf_quantization_config",
    "is_nf4_experts",
    "is_quantized_dir",
    "is_quantized_weight",
    "load_quantized",
    "load_quantized_dir",
    "load_quantized_state_dict",
    "model_storage_bytes",
    "nf4_shardable",
    "nf4_storage_bytes",
    "prepare_qat",
    "qat_prepared_modules",
    "quantize_for_decode",
    "quantize_model",
    "read_hf_quantization_config",
    "read_quantization_manifest",
    "save_quantized",
    "save_quantized_dir",
    "select_expert_params",
    "select_linear_modules",
    "tensor_storage_bytes",
    "to_nf4_expert_weights",
    "to_nf4_experts",
    "to_nf4_linear_weights",
    "to_safetensors_format",
    "unshardable_nf4_params",
    "validate_modules_for_scheme",
    "write_hf_quantization_config",
]
