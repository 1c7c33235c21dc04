"""LoRA on stacked 3-D parameters (mixture-of-experts weights), one low-rank pair per expert.

An MoE block keeps its experts as 3-D Parameters used directly in its forward, e.g.
``experts.gate_up_proj`` [E, 2 * hidden, dim] and ``experts.down_proj`` [E, dim, hidden]
(``[E, out, in]``, like ``nn.Linear``). There is no ``nn.Linear`` to wrap, so the adapter acts on
the weight: every read of ``experts.gate_up_proj`` inside the owner's forward returns
``W + s * B @ A`` with per-expert factors ``A`` [E, r, in] and ``B`` [E, out, r]::

    W'[e] = W[e] + s * B[e] @ A[e]        # s = alpha / r (rsLoRA: alpha / sqrt(r))

How: the owning module's class is swapped for a subclass (created once per class and set of
names) with a read-only property of the parameter's name, as ``torch.nn.utils.parametrize``
does, except that the Parameter stays where it was: ``state_dict()``, ``named_parameters()``
and FSDP see ``experts.gate_up_proj`` unchanged, so a base checkpoint loads the same with or
without the adapter. The factors live at ``<owner>.param_lora.<param>.lora_A`` / ``.lora_B``.
While the owner's forward runs, each adapted weight is computed once and reused (the block may
index it per expert). Outside it the property returns the Parameter itself, as PEFT's
``ParamWrapper`` (which parametrizes only during the forward): FSDP2 (``reset_sharded_param``),
``get_model_state_dict`` and DCP look parameters up with ``getattr`` and must get the stored,
possibly sharded, tensor; inside the forward FSDP2 has unsharded the weight and its factors (both
belong to the owner), so the sum mixes no DTensor with a plain tensor. A base weight that is a
tensor subclass (torchao NF4, QLoRA) is dequantized in the forward only; the factors stay in float.

Input dropout has no meaning for an update added to the weight (PEFT refuses it as well), and
neither DoRA nor PiSSA are defined here: `LoraConfig` rejects them with `target_parameters`.
An owner with ``is_transposed = True`` (transformers' flag for ``[E, in, out]`` stacks) gets
``W'[e] = W[e] + s * (B[e] @ A[e]).T`` with ``A`` [E, r, W.shape[1]], ``B`` [E, W.shape[2], r],
matching PEFT's ``ParamWrapper``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tune.peft.config import LoraConfig
from tune.peft.dense_weight import adapter_dtype_for, dense_weight, is_tensor_subclass
from tune.peft.module_patterns import closest_names, name_matches, validate_pattern

logger = logging.getLogger(__name__)

CONTAINER = "param_lora"  # the owner's submodule holding one StackedLoRA per adapted parameter
_CACHE = "_param_lora_cache"


class StackedLoRA(nn.Module):
    """Per-expert LoRA factors for one stacked parameter ``W`` [E, out, in].

    Args:
        num_experts: ``E``.
        in_features: Input size of each expert's matrix.
        out_features: Output size of each expert's matrix.
        config: The adapter's settings (r, scaling).
        adapter_name: Name of the adapter.
        transposed: ``W`` is stored ``[E, in, out]`` (the owner's ``is_transposed``).
        device: Where the factors live.
        dtype: Dtype of the factors.
    """

    def __init__(
        self,
        num_experts: int,
        in_features: int,
        out_features: int,
        config: LoraConfig,
        adapter_name: str,
        *,
        transposed: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        r = config.r
        self.lora_A = nn.Parameter(
            torch.empty(num_experts, r, in_features, device=device, dtype=dtype)
        )
        self.lora_B = nn.Parameter(
            torch.empty(num_experts, out_features, r, device=device, dtype=dtype)
        )
        self.config = config
        self.adapter_name = adapter_name
        self.transposed = transposed
        self.active = True  # this adapter is the model's active one
        self.enabled = True  # cleared by disable_adapters
        self.merged = False

    def reset_parameters(self) -> None:
        """A Kaiming-uniform per row of ``[E * r, in]`` as PEFT (``"gaussian"``: std ``1 / r``); B zero."""
        with torch.no_grad():
            flat = self.lora_A.view(-1, self.lora_A.shape[-1])  # [E * r, in], fan_in = in
            if self.config.init == "gaussian":
                nn.init.normal_(flat, std=1.0 / self.config.r)
            else:
                nn.init.kaiming_uniform_(flat, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def applies(self) -> bool:
        """Whether reads of the weight add the update (active, enabled, not merged)."""
        return self.active and self.enabled and not self.merged

    def delta(self, dtype: torch.dtype) -> torch.Tensor:
        """``s * B @ A`` per expert in ``dtype``, laid out like the weight, with grad.

        Args:
            dtype: Dtype to compute in.
        """
        a, b = self.lora_A.to(dtype), self.lora_B.to(dtype)
        if self.transposed:  # [E, in, r] @ [E, r, out]
            return torch.bmm(a.transpose(-2, -1), b.transpose(-2, -1)) * self.config.scaling
        return torch.bmm(b, a) * self.config.scaling  # [E, out, in]

    def adapted(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight + s * B @ A`` in the (dequantized) weight's dtype, with grad to A and B.

        Args:
            weight: [E, out, in] base weight, plain or a quantized subclass.
        """
        base = dense_weight(weight)
        a, b = self.lora_A.to(base.dtype), self.lora_B.to(base.dtype)
        if self.transposed:
            return torch.baddbmm(
                base, a.transpose(-2, -1), b.transpose(-2, -1), alpha=self.config.scaling
            )
        return torch.baddbmm(base, b, a, alpha=self.config.scaling)

    def extra_repr(self) -> str:
        e, r, _ = self.lora_A.shape
        return (
            f"adapter={self.adapter_name!r}, experts={e}, r={r}, scaling={self.config.scaling:g}, "
            f"transposed={self.transposed}, merged={self.merged}"
        )


def _adapted_weight(module: nn.Module, name: str) -> Any:
    base = module._parameters[name]
    cache = module.__dict__.get(_CACHE)
    if cache is None:  # outside the owner's forward: the Parameter itself (FSDP, DCP, state dicts)
        return base
    if name in cache:
        return cache[name]
    lora = module._modules[CONTAINER]._modules.get(name)  # type: ignore[union-attr]
    if base is None or not isinstance(lora, StackedLoRA) or not lora.applies():
        return base
    weight = lora.adapted(base)
    cache[name] = weight
    return weight


_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _adapted_class(base: type, names: frozenset[str]) -> type:
    key = (base, names)
    if key not in _CLASSES:
        attrs: dict[str, Any] = {"_param_lora_base_class": base}
        for name in sorted(names):
            attrs[name] = property(functools.partial(_adapted_weight, name=name))
        _CLASSES[key] = type(f"ParamLoRA{base.__name__}", (base,), attrs)
    return _CLASSES[key]


def _original_class(module: nn.Module) -> type:
    return getattr(type(module), "_param_lora_base_class", type(module))


def _open_cache(module: nn.Module, *args: Any) -> None:
    module.__dict__[_CACHE] = {}


def _close_cache(module: nn.Module, *args: Any) -> None:
    module.__dict__[_CACHE] = None


def param_lora_layers(model: nn.Module) -> dict[str, StackedLoRA]:
    """Every adapted stacked parameter of `model`: parameter name -> its `StackedLoRA`.

    Args:
        model: Any module.
    """
    found: dict[str, StackedLoRA] = {}
    for fqn, module in model.named_modules():
        container = module._modules.get(CONTAINER)
        if isinstance(container, nn.ModuleDict):
            for name, lora in container.items():
                if isinstance(lora, StackedLoRA):
                    found[f"{fqn}.{name}" if fqn else name] = lora
    return found


def factor_key(fqn: str, factor: str) -> str:
    """Native key of a factor: ``x.experts.gate_up_proj`` -> ``x.experts.param_lora.gate_up_proj.lora_A``.

    Args:
        fqn: Name of the adapted parameter.
        factor: ``"lora_A"`` or ``"lora_B"``.
    """
    owner, _, name = fqn.rpartition(".")
    return f"{owner}.{CONTAINER}.{name}.{factor}" if owner else f"{CONTAINER}.{name}.{factor}"


def select_parameter_targets(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the stacked 3-D parameters `patterns` select, in parameter order.

    A pattern is matched against parameter names like module-name patterns (plain dot-suffix,
    glob or ``re:``). Raises if a pattern matches no parameter or matches one that is not 3-D.

    Args:
        model: Any module.
        patterns: ``LoraConfig.target_parameters``.
    """
    params = {n: p for n, p in model.named_parameters() if f".{CONTAINER}." not in f".{n}"}
    selected: set[str] = set()
    for pattern in patterns:
        validate_pattern(pattern, "LoraConfig.target_parameters")
        hits = [n for n in params if name_matches(pattern, n)]
        if not hits:
            stacked = [n for n, p in params.items() if p.dim() == 3]
            close = closest_names(pattern, stacked or list(params))
            raise ValueError(
                f"LoraConfig.target_parameters: pattern {pattern!r} matches no parameter; "
                f"closest: {close or sorted(stacked)[:5]}"
            )
        flat = {n: tuple(params[n].shape) for n in hits if params[n].dim() != 3}
        if flat:
            raise ValueError(
                f"LoraConfig.target_parameters: pattern {pattern!r} matches parameters that are "
                f"not 3-D: {dict(list(flat.items())[:3])}; expert LoRA adapts stacked weights "
                "[E, out, in] (put 2-D weights of nn.Linear layers in LoraConfig.targets)"
            )
        selected.update(hits)
    return [n for n in params if n in selected]


def add_parameter_lora(
    model: nn.Module,
    fqn: str,
    config: LoraConfig,
    adapter_name: str,
    *,
    dtype: torch.dtype | None = None,
) -> StackedLoRA:
    """Adapt the stacked parameter `fqn` [E, out, in] of `model` in place (see module docstring).

    Args:
        model: The model holding the parameter.
        fqn: Parameter name, e.g. ``model.layers.0.mlp.experts.gate_up_proj``.
        config: The adapter's settings.
        adapter_name: Its name.
        dtype: Dtype of the factors; default the weight's (float32 if not floating).
    """
    owner_name, _, name = fqn.rpartition(".")
    owner = model.get_submodule(owner_name)
    weight = owner._parameters.get(name)
    if weight is None or weight.dim() != 3:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(f"{fqn}: expected a 3-D Parameter [E, out, in], got shape {shape}")
    container = owner._modules.get(CONTAINER)
    if isinstance(container, nn.ModuleDict) and name in container:
        existing = container[name]
        raise NotImplementedError(
            f"{fqn} already carries adapter {getattr(existing, 'adapter_name', '?')!r}; one adapter "
            "per stacked parameter is supported (delete_adapter() it first)"
        )
    transposed = bool(getattr(owner, "is_transposed", False))
    experts, rows, cols = weight.shape
    in_f, out_f = (rows, cols) if transposed else (cols, rows)
    lora = StackedLoRA(
        experts, in_f, out_f, config, adapter_name, transposed=transposed,
        device=weight.device, dtype=dtype or adapter_dtype_for(weight),
    )  # fmt: skip
    if weight.device.type != "meta":  # on meta: initialize_adapters() after loading
        lora.reset_parameters()
    if not isinstance(container, nn.ModuleDict):
        container = nn.ModuleDict()
        owner.add_module(CONTAINER, container)
        owner.register_forward_pre_hook(_open_cache)
        owner.register_forward_hook(_close_cache, always_call=True)
        owner.__dict__[_CACHE] = None
    container[name] = lora
    owner.__class__ = _adapted_class(_original_class(owner), frozenset(container.keys()))
    return lora


def remove_parameter_lora(model: nn.Module, fqn: str) -> None:
    """Drop the adapter of stacked parameter `fqn` (unmerging first if merged with a kept copy).

    Args:
        model: The model.
        fqn: Parameter name.
    """
    owner_name, _, name = fqn.rpartition(".")
    owner = model.get_submodule(owner_name)
    container = owner._modules[CONTAINER]
    assert isinstance(container, nn.ModuleDict)
    lora = container[name]
    assert isinstance(lora, StackedLoRA)
    if lora.merged:
        unmerge_parameter(owner, name, fqn)
    del container[name]
    base = _original_class(owner)
    if len(container):
        owner.__class__ = _adapted_class(base, frozenset(container.keys()))
        return
    del owner._modules[CONTAINER]
    # Found by identity rather than by handle: handles would point at the original after a deepcopy.
    for hooks in (owner._forward_pre_hooks, owner._forward_hooks):
        for key in [k for k, h in hooks.items() if h in (_open_cache, _close_cache)]:
            del hooks[key]
            owner._forward_hooks_always_called.pop(key, None)
    owner.__dict__.pop(_CACHE, None)
    owner.__class__ = base


def merge_parameter(owner: nn.Module, name: str, fqn: str, *, keep_original: bool = True) -> None:
    """Fold the adapter of ``owner.<name>`` into the Parameter in place (float32 sum).

    Args:
        owner: The module holding the parameter.
        name: Parameter name on `owner`.
        fqn: Its name in the model, for errors.
        keep_original: Keep a copy (non-persistent buffer) so `unmerge_parameter` is bit-exact.
    """
    lora = _stacked(owner, name)
    weight = owner._parameters[name]
    assert weight is not None
    if lora.merged:
        raise RuntimeError(f"{fqn}: adapter {lora.adapter_name!r} is already merged")
    if is_tensor_subclass(weight):
        raise TypeError(
            f"cannot merge into {fqn} of type {type(weight).__name__} in place; use "
            "merge_and_unload(model, dequantize=True) for a dense merged model"
        )
    with torch.no_grad():
        merged = (weight.to(torch.float32) + lora.delta(torch.float32)).to(weight.dtype)
        if keep_original:
            lora.register_buffer("original_weight", weight.detach().clone(), persistent=False)
        weight.copy_(merged)
    lora.merged = True


def unmerge_parameter(owner: nn.Module, name: str, fqn: str) -> None:
    """Restore ``owner.<name>`` bit-exactly from the copy `merge_parameter` kept.

    Args:
        owner: The module holding the parameter.
        name: Parameter name on `owner`.
        fqn: Its name in the model, for errors.
    """
    lora = _stacked(owner, name)
    if not lora.merged:
        raise RuntimeError(f"{fqn}: nothing to unmerge")
    original = lora._buffers.get("original_weight")
    if original is None:
        raise RuntimeError(f"{fqn}: merged with keep_original=False, so it cannot be restored")
    weight = owner._parameters[name]
    assert weight is not None
    with torch.no_grad():
        weight.copy_(original)
    del lora.original_weight
    lora.merged = False


def _stacked(owner: nn.Module, name: str) -> StackedLoRA:
    container = owner._modules.get(CONTAINER)
    lora = container._modules.get(name) if container is not None else None
    if not isinstance(lora, StackedLoRA):
        raise KeyError(f"{type(owner).__name__}.{name} carries no stacked-parameter adapter")
    return lora


def to_peft_factors(lora: StackedLoRA) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors in PEFT's ``ParamWrapper`` layout: ``lora_A`` [E * r, in], ``lora_B`` [out, r * E].

    PEFT's A rows are expert-major (row ``e * r + k``); its B columns are rank-major (column
    ``k * E + e``).

    Args:
        lora: The adapter of one stacked parameter.
    """
    a, b = lora.lora_A.detach(), lora.lora_B.detach()
    experts, r, in_f = a.shape
    out_f = b.shape[1]
    return a.reshape(experts * r, in_f).contiguous(), b.permute(1, 2, 0).reshape(
        out_f, r * experts
    ).contiguous()


def from_peft_factors(
    lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's ``lora_A`` [E * r, in] and ``lora_B`` [out, r * E] as ``A`` [E, r, in], ``B`` [E, out, r].

    Args:
        lora_a: PEFT's A.
        lora_b: PEFT's B.
        num_experts: ``E``.
    """
    r = lora_a.shape[0] // num_experts
    a = lora_a.reshape(num_experts, r, lora_a.shape[-1])
    b = lora_b.reshape(lora_b.shape[0], r, num_experts).permute(2, 0, 1)
    return a.contiguous(), b.contiguous()
