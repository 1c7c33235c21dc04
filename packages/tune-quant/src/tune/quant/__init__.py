"""tune.quant: torchao post-training quantization, QAT, NF4 weights for QLoRA, float8 training."""

from tune.quant._version import __version__
from tune.quant.float8 import FLOAT8_RECIPES, apply_float8_training, check_float8_supported
from tune.quant.hf_config import (
    hf_quantization_config,
    read_hf_quantization_config,
    write_hf_quantization_config,
)
from tune.quant.memory import model_storage_bytes, tensor_storage_bytes
from tune.quant.module_filter import ADAPTER_PATTERNS, ModuleFilter, select_linear_modules
from tune.quant.nf4 import NF4Stats, nf4_shardable, nf4_storage_bytes, to_nf4_linear_weights
from tune.quant.ptq import is_quantized_weight, quantize_model, validate_modules_for_scheme
from tune.quant.qat import convert_qat, prepare_qat, qat_prepared_modules
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

__all__ = [
    "ADAPTER_PATTERNS",
    "FLOAT8_RECIPES",
    "SCHEMES",
    "DeviceSupport",
    "ModuleFilter",
    "NF4Stats",
    "QuantScheme",
    "UnsupportedSchemeError",
    "__version__",
    "apply_float8_training",
    "check_float8_supported",
    "check_scheme_supported",
    "convert_qat",
    "get_scheme",
    "hf_quantization_config",
    "is_quantized_weight",
    "load_quantized",
    "load_quantized_state_dict",
    "model_storage_bytes",
    "nf4_shardable",
    "nf4_storage_bytes",
    "prepare_qat",
    "qat_prepared_modules",
    "quantize_model",
    "read_hf_quantization_config",
    "save_quantized",
    "select_linear_modules",
    "tensor_storage_bytes",
    "to_nf4_linear_weights",
    "to_safetensors_format",
    "validate_modules_for_scheme",
    "write_hf_quantization_config",
]
