"""Named quantization schemes, the torchao configs behind them per device, and support checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    MappingType,
    PerGroup,
)
from torchao.quantization.qat import FakeQuantizeConfigBase, IntxFakeQuantizeConfig

__all__ = [
    "SCHEMES",
    "DeviceSupport",
    "QuantScheme",
    "UnsupportedSchemeError",
    "check_scheme_supported",
    "get_scheme",
]

INT4_GROUP_SIZE = 32
_INT4: torch.dtype = torch.int4  # type: ignore[attr-defined]  # sub-byte dtype, no stub
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class UnsupportedSchemeError(ValueError):
    """A scheme was asked for on a device, dtype or module shape that cannot run it."""


@dataclass(frozen=True)
class DeviceSupport:
    """How one scheme runs on one device type.

    Args:
        ptq_config: builds the torchao config used by post-training quantization.
        dtypes: floating dtypes of the weights that the quantized kernels accept.
        qat_activation: builds the activation fake-quantization config for QAT (None: weights only).
        qat_weight: builds the weight fake-quantization config for QAT.
        qat_convert_config: builds the config applied at QAT convert; its numerics equal the
            fake quantization (it may differ from ``ptq_config`` in layout).
        notes: what the device uses, for error messages and docs.
        safetensors: torchao can write ``ptq_config``'s quantized tensors to safetensors
            (``to_safetensors_format``); else only ``torch.save`` files hold them.
    """

    ptq_config: Callable[[], AOBaseConfig]
    dtypes: tuple[torch.dtype, ...]
    qat_weight: Callable[[], FakeQuantizeConfigBase]
    qat_convert_config: Callable[[], AOBaseConfig]
    qat_activation: Callable[[], FakeQuantizeConfigBase] | None = None
    notes: str = ""
    safetensors: bool = True


@dataclass(frozen=True)
class QuantScheme:
    """A named quantization scheme with its per-device implementations.

    Args:
        name: registry key, e.g. ``"int8_weight_only"``.
        description: one line for humans.
        group_size: input-feature group size of the weight scales (None: one scale per row);
            a quantized Linear's ``in_features`` must be a multiple of it.
        devices: device type (``"cpu"``, ``"cuda"``) -> how the scheme runs there.
    """

    name: str
    description: str
    group_size: int | None
    devices: dict[str, DeviceSupport] = field(default_factory=dict)


def _int8_weight_fake_quant() -> FakeQuantizeConfigBase:
    return IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)


def _int4_weight_fake_quant() -> FakeQuantizeConfigBase:
    return IntxFakeQuantizeConfig(_INT4, group_size=INT4_GROUP_SIZE, is_symmetric=True)


def _int8_token_fake_quant(symmetric: bool) -> Callable[[], FakeQuantizeConfigBase]:
    return lambda: IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=symmetric)


def _intx_int4_weight_only() -> AOBaseConfig:
    return IntxWeightOnlyConfig(weight_dtype=_INT4, granularity=PerGroup(INT4_GROUP_SIZE))


def _cpu_int4_weight_only() -> AOBaseConfig:
    # Int4WeightOnlyConfig has no CPU kernel in torchao 0.18; the prototype config packs for
    # the CPU tinygemm kernel (aten._weight_int4pack_mm_for_cpu).
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)


def _cuda_int4_weight_only() -> AOBaseConfig:
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)


def _cuda_int4_weight_fake_quant() -> FakeQuantizeConfigBase:
    from torchao.quantization.qat.fake_quantize_config import Int4WeightFakeQuantizeConfig

    return Int4WeightFakeQuantizeConfig(group_size=INT4_GROUP_SIZE, activation_dtype=torch.bfloat16)


def _da8w4() -> AOBaseConfig:
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=_INT4, weight_granularity=PerGroup(INT4_GROUP_SIZE)
    )


def _int8_both_asymmetric_activations() -> AOBaseConfig:
    return Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC)


def _int8_both(device: str) -> DeviceSupport:
    # torchao 0.18 fake-quantizes per-token activations only asymmetrically, so QAT converts to
    # the asymmetric-activation variant of the PTQ config (same weights, matching numerics).
    return DeviceSupport(
        ptq_config=Int8DynamicActivationInt8WeightConfig,
        dtypes=_FLOAT_DTYPES,
        qat_activation=_int8_token_fake_quant(symmetric=False),
        qat_weight=_int8_weight_fake_quant,
        qat_convert_config=_int8_both_asymmetric_activations,
        notes=f"Int8DynamicActivationInt8WeightConfig (per-token int8 activations, per-row int8 weights) on {device}",
    )


def _int8_weight(device: str) -> DeviceSupport:
    return DeviceSupport(
        ptq_config=Int8WeightOnlyConfig,
        dtypes=_FLOAT_DTYPES,
        qat_weight=_int8_weight_fake_quant,
        qat_convert_config=Int8WeightOnlyConfig,
        notes=f"Int8WeightOnlyConfig (per-row symmetric int8) on {device}",
    )


def _da8w4_support(device: str) -> DeviceSupport:
    return DeviceSupport(
        ptq_config=_da8w4,
        dtypes=_FLOAT_DTYPES,
        qat_activation=_int8_token_fake_quant(symmetric=False),
        qat_weight=_int4_weight_fake_quant,
        qat_convert_config=_da8w4,
        notes=f"Int8DynamicActivationIntxWeightConfig(int4, PerGroup(32)) on {device}",
    )


SCHEMES: dict[str, QuantScheme] = {
    "int8_weight_only": QuantScheme(
        name="int8_weight_only",
        description="int8 weights, one symmetric scale per output row; float activations",
        group_size=None,
        devices={"cpu": _int8_weight("cpu"), "cuda": _int8_weight("cuda")},
    ),
    "int8_dynamic_int8_weight": QuantScheme(
        name="int8_dynamic_int8_weight",
        description="int8 activations quantized per token at run time, int8 per-row weights",
        group_size=None,
        devices={"cpu": _int8_both("cpu"), "cuda": _int8_both("cuda")},
    ),
    "int4_weight_only": QuantScheme(
        name="int4_weight_only",
        description="int4 weights in groups of 32 input features (asymmetric); float activations",
        group_size=INT4_GROUP_SIZE,
        devices={
            "cpu": DeviceSupport(
                ptq_config=_cpu_int4_weight_only,
                dtypes=_FLOAT_DTYPES,
                qat_weight=_int4_weight_fake_quant,
                qat_convert_config=_intx_int4_weight_only,
                notes=(
                    "PrototypeInt4WeightOnlyConfig (CPU tinygemm packing); QAT converts to "
                    "IntxWeightOnlyConfig(int4, PerGroup(32)), whose numerics match its fake quantization"
                ),
                safetensors=False,  # torchao 0.18 cannot flatten its Int4OpaqueTensor
            ),
            "cuda": DeviceSupport(
                ptq_config=_cuda_int4_weight_only,
                dtypes=(torch.bfloat16,),
                qat_weight=_cuda_int4_weight_fake_quant,
                qat_convert_config=_cuda_int4_weight_only,
                notes="Int4WeightOnlyConfig(group_size=32) (CUDA kernels need bfloat16 weights)",
            ),
        },
    ),
    "int8_dynamic_int4_weight": QuantScheme(
        name="int8_dynamic_int4_weight",
        description="int8 per-token activations, int4 symmetric weights in groups of 32",
        group_size=INT4_GROUP_SIZE,
        devices={"cpu": _da8w4_support("cpu"), "cuda": _da8w4_support("cuda")},
    ),
}


def get_scheme(name: str) -> QuantScheme:
    """Look a scheme up by name.

    Args:
        name: one of ``SCHEMES``.

    Raises:
        UnsupportedSchemeError: the name is not registered.
    """
    if name not in SCHEMES:
        raise UnsupportedSchemeError(
            f"unknown quantization scheme {name!r}; expected one of {sorted(SCHEMES)}"
        )
    return SCHEMES[name]


def check_scheme_supported(
    scheme: str, device: str | torch.device, dtype: torch.dtype = torch.float32
) -> DeviceSupport:
    """Fail early, before any model is loaded, when ``scheme`` cannot run on ``device``/``dtype``.

    Args:
        scheme: scheme name, one of ``SCHEMES``.
        device: where the quantized model will run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        dtype: dtype of the weights before quantization (the activations' dtype).

    Returns:
        How the scheme runs on that device.

    Raises:
        UnsupportedSchemeError: naming the scheme, device and dtype and what is supported.
    """
    spec = get_scheme(scheme)
    device_type = torch.device(device).type
    support = spec.devices.get(device_type)
    if support is None:
        raise UnsupportedSchemeError(
            f"quantization scheme {scheme!r} cannot run on device {str(device)!r}: "
            f"supported device types are {sorted(spec.devices)}"
        )
    if dtype not in support.dtypes:
        raise UnsupportedSchemeError(
            f"quantization scheme {scheme!r} on {device_type} needs weights in one of "
            f"{[str(d) for d in support.dtypes]}, got {dtype} ({support.notes})"
        )
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedSchemeError(
            f"quantization scheme {scheme!r} was asked for on {str(device)!r} but CUDA is not available"
        )
    return support
