"""Post-training quantization of a model's Linear weights with torchao, chosen by module name."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torchao.quantization import NF4Tensor, quantize_
from torchao.utils import TorchAOBaseTensor

from tune.quant.module_filter import ModuleFilter, select_linear_modules
from tune.quant.schemes import UnsupportedSchemeError, check_scheme_supported, get_scheme

__all__ = ["is_quantized_weight", "quantize_model", "validate_modules_for_scheme"]

logger = logging.getLogger(__name__)


def is_quantized_weight(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` is a torchao quantized tensor subclass (Int8Tensor, NF4Tensor, ...)."""
    return isinstance(tensor, (TorchAOBaseTensor, NF4Tensor))


def validate_modules_for_scheme(
    model: nn.Module,
    fqns: Sequence[str],
    scheme: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Check every chosen module can hold ``scheme``'s weights (shape, device, dtype, not yet quantized).

    Args:
        model: the model holding the modules (a ``meta`` skeleton works with ``device``).
        fqns: names of the Linear modules about to be converted.
        scheme: scheme name.
        device: check as if the weights were on this device (None: where they are).
        dtype: check as if the weights had this dtype (None: theirs).

    Raises:
        UnsupportedSchemeError: naming the first offending module and what was expected.
    """
    spec = get_scheme(scheme)
    modules = dict(model.named_modules())
    for fqn in fqns:
        weight = modules[fqn].weight
        if is_quantized_weight(weight):
            raise UnsupportedSchemeError(
                f"module {fqn!r} already holds a quantized weight ({type(weight).__name__})"
            )
        check_scheme_supported(scheme, device or weight.device, dtype or weight.dtype)
        if spec.group_size is not None and weight.shape[-1] % spec.group_size != 0:
            raise UnsupportedSchemeError(
                f"module {fqn!r} has weight of shape {tuple(weight.shape)} (in_features="
                f"{weight.shape[-1]}): scheme {scheme!r} needs in_features to be a multiple of "
                f"{spec.group_size}; exclude it"
            )


def _warn_on_shared_weights(model: nn.Module, fqns: Sequence[str]) -> None:
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    modules = dict(model.named_modules())
    for fqn in fqns:
        names = owners.get(id(modules[fqn].weight), [])
        if len(names) > 1:
            logger.warning(
                "%s.weight is shared with %s; quantizing unties it (the others keep the float weight)",
                fqn,
                [n for n in names if n != f"{fqn}.weight"],
            )


def quantize_model(
    model: nn.Module,
    scheme: str,
    *,
    include: ModuleFilter = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Quantize the chosen Linear weights of ``model`` in place with a named scheme.

    The torchao config is picked for the device the weights are on (``schemes.SCHEMES``).

    Args:
        model: a float model; its Linear weights become torchao tensor subclasses.
        scheme: one of ``SCHEMES`` (``"int8_weight_only"``, ``"int8_dynamic_int8_weight"``,
            ``"int4_weight_only"``, ``"int8_dynamic_int4_weight"``).
        include: module-name patterns, a callable ``(module, fqn) -> bool``, or None for all Linears.
        exclude: module-name patterns to leave in float (e.g. ``["output"]``).

    Returns:
        The FQNs of the quantized modules.

    Raises:
        UnsupportedSchemeError: unknown scheme, a device/dtype the scheme cannot run, or a module
            whose shape does not fit the scheme; raised before any weight is changed.
    """
    get_scheme(scheme)
    fqns = select_linear_modules(model, include, exclude)
    if not fqns:
        logger.warning("quantize_model(%s): no Linear module selected", scheme)
        return []
    validate_modules_for_scheme(model, fqns, scheme)
    _warn_on_shared_weights(model, fqns)
    modules = dict(model.named_modules())
    by_device: dict[str, list[str]] = {}
    for fqn in fqns:
        by_device.setdefault(modules[fqn].weight.device.type, []).append(fqn)
    for device_type, names in by_device.items():
        config = get_scheme(scheme).devices[device_type].ptq_config()
        chosen = set(names)
        quantize_(model, config, filter_fn=lambda _m, fqn, chosen=chosen: fqn in chosen)
    logger.info("quantized %d Linear modules with %s", len(fqns), scheme)
    return fqns
