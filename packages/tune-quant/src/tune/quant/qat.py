"""Quantization-aware training: fake-quantize chosen Linear weights, train, convert to real quantization.

Plain ``nn.Linear`` modules are swapped by torchao's ``QATConfig`` (``FakeQuantizedLinear`` keeps the
``weight``/``bias`` names). A Linear subclass with its own forward (a LoRA layer holding the frozen base
weight and ``lora_A``/``lora_B``) keeps its class: its ``weight`` gets a fake-quantizing
parametrization, and state-dict keys stay ``<fqn>.weight``. Adapter matrices are never fake-quantized.
For schemes with dynamic int8 activations, such a layer's whole input is fake-quantized, which is
what the layer sees once the adapter is merged into the base weight before ``convert_qat``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchao.quantization import quantize_
from torchao.quantization.qat import FakeQuantizedLinear, FakeQuantizerBase, QATConfig

from tune.quant.module_filter import ModuleFilter, select_linear_modules
from tune.quant.ptq import validate_modules_for_scheme
from tune.quant.schemes import DeviceSupport, UnsupportedSchemeError, get_scheme

__all__ = ["convert_qat", "prepare_qat", "qat_prepared_modules"]

logger = logging.getLogger(__name__)

_MARK = "_tune_qat_scheme"
_HANDLES = "_tune_qat_handles"
_ORIGINAL = "parametrizations.weight.original"


class _FakeQuantizeWeight(nn.Module):
    """Parametrization: weight -> fake-quantized weight (straight-through gradient)."""

    def __init__(self, fake_quantizer: nn.Module) -> None:
        super().__init__()
        self.fake_quantizer = fake_quantizer

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.fake_quantizer(weight)


def _stable_keys_on_save(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    if prefix + _ORIGINAL in state_dict:
        state_dict[prefix + "weight"] = state_dict.pop(prefix + _ORIGINAL)


def _stable_keys_on_load(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    if prefix + "weight" in state_dict:
        state_dict[prefix + _ORIGINAL] = state_dict.pop(prefix + "weight")


def _prepare_in_place(module: nn.Module, support: DeviceSupport) -> None:
    weight_fq = FakeQuantizerBase.from_config(support.qat_weight())
    parametrize.register_parametrization(module, "weight", _FakeQuantizeWeight(weight_fq))
    handles = [
        module.register_state_dict_post_hook(_stable_keys_on_save),
        module.register_load_state_dict_pre_hook(_stable_keys_on_load),
    ]
    if support.qat_activation is not None:
        act_fq = FakeQuantizerBase.from_config(support.qat_activation())
        module.add_module("activation_fake_quantizer", act_fq)
        handles.append(
            module.register_forward_pre_hook(
                lambda m, args: (m.activation_fake_quantizer(args[0]), *args[1:])
            )
        )
    setattr(module, _HANDLES, handles)


def _revert_in_place(module: nn.Module) -> None:
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    for handle in getattr(module, _HANDLES):
        handle.remove()
    delattr(module, _HANDLES)
    if hasattr(module, "activation_fake_quantizer"):
        del module.activation_fake_quantizer


def prepare_qat(
    model: nn.Module,
    scheme: str,
    *,
    include: ModuleFilter = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Insert fake quantization for ``scheme`` on the chosen Linear weights (and activations).

    Args:
        model: float model; LoRA adapter matrices in it are left alone.
        scheme: one of ``SCHEMES``.
        include: module-name patterns, a callable ``(module, fqn) -> bool``, or None for all Linears.
        exclude: module-name patterns to leave in float.

    Returns:
        The FQNs of the prepared modules.

    Raises:
        UnsupportedSchemeError: as ``quantize_model``, or a module already prepared.
    """
    get_scheme(scheme)
    fqns = select_linear_modules(model, include, exclude)
    modules = dict(model.named_modules())
    for fqn in fqns:
        if hasattr(modules[fqn], _MARK) or isinstance(modules[fqn], FakeQuantizedLinear):
            raise UnsupportedSchemeError(f"module {fqn!r} is already prepared for QAT")
    validate_modules_for_scheme(model, fqns, scheme)
    swapped: dict[str, set[str]] = {}
    for fqn in fqns:
        module = modules[fqn]
        support = get_scheme(scheme).devices[module.weight.device.type]
        if type(module) is nn.Linear:
            swapped.setdefault(module.weight.device.type, set()).add(fqn)
        else:
            _prepare_in_place(module, support)
    for device_type, chosen in swapped.items():
        support = get_scheme(scheme).devices[device_type]
        act = support.qat_activation() if support.qat_activation is not None else None
        config = QATConfig(
            activation_config=act, weight_config=support.qat_weight(), step="prepare"
        )
        quantize_(model, config, filter_fn=lambda _m, fqn, chosen=chosen: fqn in chosen)
    modules = dict(model.named_modules())
    for fqn in fqns:
        setattr(modules[fqn], _MARK, scheme)
    logger.info("prepared %d Linear modules for QAT with %s", len(fqns), scheme)
    return fqns


def qat_prepared_modules(model: nn.Module) -> dict[str, str]:
    """Return ``{fqn: scheme}`` for the modules ``prepare_qat`` changed and not yet converted."""
    return {fqn: getattr(m, _MARK) for fqn, m in model.named_modules() if hasattr(m, _MARK)}


def _unprepare(model: nn.Module, fqn: str) -> nn.Module:
    """Return the float module that replaces the prepared module ``fqn`` (swapped in place)."""
    module = model.get_submodule(fqn)
    delattr(module, _MARK)
    if not isinstance(module, FakeQuantizedLinear):
        _revert_in_place(module)
        return module
    linear = module.to_linear()
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return linear


def convert_qat(
    model: nn.Module,
    *,
    merge_adapters: Callable[[nn.Module], None] | None = None,
    scheme: str | None = None,
) -> list[str]:
    """Replace fake quantization by the scheme's real quantized weights (in place).

    Equivalent to torchao's ``QATConfig(base_config, step="convert")``: fake quantizers are removed,
    then the scheme's convert config quantizes the trained weights. ``merge_adapters`` runs in
    between, on float weights, so LoRA adapters can be folded into the base before quantizing.

    Args:
        model: a model prepared by ``prepare_qat`` and trained.
        merge_adapters: optional ``model -> None`` called after the fake quantization is removed
            and before quantizing (e.g. a LoRA merge).
        scheme: the scheme the caller prepared with; checked before anything changes (None:
            not checked).

    Returns:
        The FQNs of the converted modules.

    Raises:
        ValueError: nothing in ``model`` carries fake quantization, or it was prepared with
            another scheme than ``scheme``; the model is left unchanged.
    """
    prepared = qat_prepared_modules(model)
    if not prepared:
        raise ValueError(
            f"convert_qat{'' if scheme is None else f' ({scheme!r})'}: no layer of the model "
            "carries fake quantization; prepare_qat must run after adapters are injected "
            "(injecting adapters replaces the prepared Linear layers)"
        )
    if scheme is not None and set(prepared.values()) != {scheme}:
        raise ValueError(
            f"convert_qat: the model was prepared with {sorted(set(prepared.values()))}, "
            f"not {scheme!r}"
        )
    groups: dict[tuple[str, str], set[str]] = {}
    for fqn, scheme in prepared.items():
        weight = _unprepare(model, fqn).get_parameter("weight")
        groups.setdefault((scheme, weight.device.type), set()).add(fqn)
    if merge_adapters is not None:
        merge_adapters(model)
    for (scheme, device_type), chosen in groups.items():
        config = get_scheme(scheme).devices[device_type].qat_convert_config()
        quantize_(model, config, filter_fn=lambda _m, fqn, chosen=chosen: fqn in chosen)
    logger.info("converted %d QAT modules", len(prepared))
    return list(prepared)
