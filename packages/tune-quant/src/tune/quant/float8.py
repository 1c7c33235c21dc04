"""Float8 training of chosen Linear layers with torchao (CUDA, compute capability 8.9 or newer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from tune.quant.module_filter import ModuleFilter, select_linear_modules
from tune.quant.schemes import UnsupportedSchemeError

__all__ = ["FLOAT8_RECIPES", "apply_float8_training", "check_float8_supported"]

logger = logging.getLogger(__name__)

FLOAT8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
_MIN_CAPABILITY = (8, 9)
_DIM_MULTIPLE = 16  # float8 GEMMs need both weight dims divisible by 16


def check_float8_supported(device: str | torch.device = "cuda", recipe: str = "tensorwise") -> None:
    """Fail early, before any model is loaded, when float8 training cannot run.

    Args:
        device: where training will run.
        recipe: one of ``FLOAT8_RECIPES``.

    Raises:
        UnsupportedSchemeError: unknown recipe, a non-CUDA device, no CUDA, or a GPU older than
            compute capability 8.9 (no float8 tensor cores).
    """
    if recipe not in FLOAT8_RECIPES:
        raise UnsupportedSchemeError(
            f"unknown float8 recipe {recipe!r}; expected one of {FLOAT8_RECIPES}"
        )
    dev = torch.device(device)
    if dev.type != "cuda":
        raise UnsupportedSchemeError(
            f"float8 training needs a CUDA device (compute capability >= 8.9), got {str(device)!r}"
        )
    if not torch.cuda.is_available():
        raise UnsupportedSchemeError(
            "float8 training needs CUDA, but torch.cuda.is_available() is False"
        )
    capability = torch.cuda.get_device_capability(dev)
    if capability < _MIN_CAPABILITY:
        raise UnsupportedSchemeError(
            f"float8 training needs compute capability >= {_MIN_CAPABILITY}, "
            f"{torch.cuda.get_device_name(dev)} has {capability}"
        )


def apply_float8_training(
    model: nn.Module,
    *,
    include: ModuleFilter = None,
    exclude: Sequence[str] = ("output",),
    recipe: str = "tensorwise",
) -> list[str]:
    """Swap the chosen ``nn.Linear`` modules for torchao ``Float8Linear`` (in place).

    Apply before ``torch.compile`` and FSDP. Parameter names are unchanged.

    Args:
        model: a model on a CUDA device.
        include: module-name patterns, a callable ``(module, fqn) -> bool``, or None for all Linears.
        exclude: patterns kept in high precision (the LM head by default).
        recipe: torchao float8 recipe, one of ``FLOAT8_RECIPES``.

    Returns:
        The FQNs of the converted modules.

    Raises:
        UnsupportedSchemeError: see ``check_float8_supported``, or a module whose dims are not
            multiples of 16.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    fqns = select_linear_modules(model, include, exclude)
    modules = dict(model.named_modules())
    for fqn in fqns:
        weight = modules[fqn].weight
        check_float8_supported(weight.device, recipe)
        if any(d % _DIM_MULTIPLE for d in weight.shape):
            raise UnsupportedSchemeError(
                f"module {fqn!r} has weight of shape {tuple(weight.shape)}: float8 training needs "
                f"both dims to be multiples of {_DIM_MULTIPLE}; exclude it"
            )
    chosen = set(fqns)
    convert_to_float8_training(
        model,
        module_filter_fn=lambda _m, fqn: fqn in chosen,
        config=Float8LinearConfig.from_recipe_name(recipe),
    )
    logger.info("float8 training (%s) on %d Linear modules", recipe, len(fqns))
    return fqns
