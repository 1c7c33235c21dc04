"""NF4 storage of frozen stacked expert weights ``[E, out, in]`` (QLoRA on mixture-of-experts).

torchao's ``NF4Tensor`` is 2-D only. An MoE block keeps its experts as 3-D Parameters
(``experts.gate_up_proj`` [E, 2 * hidden, dim], ``experts.down_proj`` [E, dim, hidden]), so an
``NF4ExpertTensor`` holds the inner tensors of one torchao NF4 quantization of the stack's
``[E * out, in]`` view (4-bit codes, int8 block scales, second-level factors, their mean, the
16-entry table) and presents them as a frozen ``[E, out, in]`` tensor::

    weight = to_nf4_experts(w)  # w: [E, out, in] float
    dense = weight.get_original_weight()
    # dense == to_nf4(w.view(E * out, in)).get_original_weight().view(E, out, in), bit for bit

Quantizing the stack as one tensor, not expert by expert, keeps torchao's numbers exactly and
needs only ``E * out * in`` (not each expert's ``out * in``) to be a multiple of
``block_size * scaler_block_size``: gpt-oss experts (2880 x 2880) fit only that way. The 64-element
blocks never straddle two experts when ``out * in`` is a multiple of 64; the second-level scale
groups and the one scale mean are shared.

How it is used: tune-peft's expert LoRA (any reader of ``get_original_weight()``) dequantizes the
stack inside the block's forward, adds ``B @ A`` and trains only the factors. Read without an
adapter, any other op on it (``transpose`` before ``torch._grouped_mm``, ``unbind``, indexing)
dequantizes the whole stack first and runs on the float copy. ``.to(device)``, ``.to(dtype)``
(the dtype it dequantizes to), ``copy_`` (from another stack or a float tensor, re-quantized),
``clone``, ``detach`` and ``__tensor_flatten__`` keep it quantized, so ``nn.Module.to``,
``load_state_dict`` and ``torch.save`` (weights_only, see ``NF4_EXPERT_SAFE_GLOBALS``) work.
FSDP2 cannot shard it (no ``fsdp_pre_all_gather``): ``unshardable_nf4_params`` lists it so that
it stays whole (4-bit) on every rank.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from tune.quant._torchao import import_torchao
from tune.quant.memory import tensor_storage_bytes
from tune.quant.module_filter import ADAPTER_PATTERNS
from tune.quant.nf4 import NF4Stats

if TYPE_CHECKING:
    from torchao.quantization import NF4Tensor

__all__ = [
    "NF4_EXPERT_SAFE_GLOBALS",
    "NF4ExpertTensor",
    "is_nf4_experts",
    "select_expert_params",
    "to_nf4_expert_weights",
    "to_nf4_experts",
]

logger = logging.getLogger(__name__)

_INNER = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")
# Expert-LoRA factors (tune-peft's `<owner>.param_lora.<param>.lora_A`) are the trained part.
_ADAPTER_PARAM_PATTERNS = (*ADAPTER_PATTERNS, "*param_lora.*")
_aten = torch.ops.aten


class NF4ExpertTensor(torch.Tensor):
    """A frozen stacked weight ``[E, out, in]`` held as NF4 (see the module docstring).

    Build it with ``to_nf4_experts``. Inner tensors are torchao's, for the ``[E * out, in]`` view.

    Args:
        quantized_data: uint8 [E * out * in / 2], two 4-bit codes per byte.
        quantized_scalers: int8 [E * out * in / block_size], one scale per block.
        quantization_factor: [E * out * in / (block_size * scaler_block_size)] second-level factors.
        scaler_mean: [] mean of the block scales.
        nf4: [16] the NF4 code table.
        shape: ``(E, out, in)``.
        dtype: the dtype it dequantizes to.
        block_size: elements per block scale.
        scaler_block_size: block scales per second-level factor.
    """

    quantized_data: torch.Tensor
    quantized_scalers: torch.Tensor
    quantization_factor: torch.Tensor
    scaler_mean: torch.Tensor
    nf4: torch.Tensor
    block_size: int
    scaler_block_size: int

    @staticmethod
    def __new__(
        cls,
        quantized_data: torch.Tensor,
        quantized_scalers: torch.Tensor,
        quantization_factor: torch.Tensor,
        scaler_mean: torch.Tensor,
        nf4: torch.Tensor,
        *,
        shape: Sequence[int],
        dtype: torch.dtype,
        block_size: int,
        scaler_block_size: int,
    ) -> NF4ExpertTensor:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined,no-any-return]
            cls, tuple(shape), dtype=dtype, device=quantized_data.device, requires_grad=False
        )

    def __init__(
        self,
        quantized_data: torch.Tensor,
        quantized_scalers: torch.Tensor,
        quantization_factor: torch.Tensor,
        scaler_mean: torch.Tensor,
        nf4: torch.Tensor,
        *,
        shape: Sequence[int],
        dtype: torch.dtype,
        block_size: int,
        scaler_block_size: int,
    ) -> None:
        self.quantized_data = quantized_data
        self.quantized_scalers = quantized_scalers
        self.quantization_factor = quantization_factor
        self.scaler_mean = scaler_mean
        self.nf4 = nf4
        self.block_size = block_size
        self.scaler_block_size = scaler_block_size

    def _rebuilt(self, **inner: torch.Tensor | torch.dtype) -> NF4ExpertTensor:
        """A stack over ``inner`` (default: these inner tensors), same shape and blocks."""
        tensors = {name: inner.get(name, getattr(self, name)) for name in _INNER}
        return NF4ExpertTensor(
            **tensors,  # type: ignore[arg-type]
            shape=self.shape,
            dtype=inner.get("dtype", self.dtype),  # type: ignore[arg-type]
            block_size=self.block_size,
            scaler_block_size=self.scaler_block_size,
        )

    def as_nf4(self) -> NF4Tensor:
        """torchao's ``NF4Tensor`` [E * out, in] over the same inner tensors (no copy)."""
        import_torchao()
        from torchao.quantization import NF4Tensor
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import SubclassTensorArgs

        experts, out_features, in_features = self.shape
        rows = experts * out_features
        meta = SubclassTensorArgs(
            torch.Size([rows, in_features]), (in_features, 1), 0,
            self.nf4.dtype, self.quantized_data.device, False,
        )  # fmt: skip
        return NF4Tensor(
            meta, self.block_size, rows * in_features // self.block_size, self.scaler_block_size,
            self.quantized_scalers, self.quantization_factor, self.scaler_mean,
            self.quantized_data, self.nf4,
        )  # fmt: skip

    def get_original_weight(self) -> torch.Tensor:
        """The dequantized stack [E, out, in] in this tensor's dtype (a new float tensor)."""
        return self.as_nf4().get_original_weight().view(self.shape).to(self.dtype)

    def dequantize(self) -> torch.Tensor:  # type: ignore[override]
        """Same as ``get_original_weight()``."""
        return self.get_original_weight()

    def __repr__(self) -> str:  # type: ignore[override]
        return (
            f"NF4ExpertTensor(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"block_size={self.block_size}, scaler_block_size={self.scaler_block_size})"
        )

    def __tensor_flatten__(self) -> tuple[list[str], dict[str, Any]]:
        return list(_INNER), {
            "shape": tuple(self.shape),
            "dtype": self.dtype,
            "block_size": self.block_size,
            "scaler_block_size": self.scaler_block_size,
        }

    @staticmethod
    def __tensor_unflatten__(
        inner: dict[str, torch.Tensor], meta: dict[str, Any], outer_size: Any, outer_stride: Any
    ) -> NF4ExpertTensor:
        return NF4ExpertTensor(*(inner[name] for name in _INNER), **meta)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        tensors = tuple(getattr(self, name) for name in _INNER)
        meta = (tuple(self.shape), self.dtype, self.block_size, self.scaler_block_size)
        return _rebuild_nf4_experts, (tensors, meta)

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        # Ops that keep it quantized (and metadata reads) go on to __torch_dispatch__; every
        # other op reads the weight, so it gets the dequantized stack, above autograd: a view of
        # it (a transpose before torch._grouped_mm) is then an ordinary view of a float tensor.
        if getattr(func, "__name__", "") not in _KEEP_QUANTIZED:
            args, kwargs = tree_map(_dense, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        handler = _OPS.get(func)
        if handler is not None:
            return handler(*args, **kwargs)
        # Any other op reads the weight: dequantize every stack among the arguments first.
        args, kwargs = tree_map(_dense, (args, kwargs))
        return func(*args, **kwargs)


def _rebuild_nf4_experts(
    tensors: tuple[torch.Tensor, ...], meta: tuple[Any, ...]
) -> NF4ExpertTensor:
    shape, dtype, block_size, scaler_block_size = meta
    return NF4ExpertTensor(
        *tensors, shape=shape, dtype=dtype, block_size=block_size,
        scaler_block_size=scaler_block_size,
    )  # fmt: skip


# torch.load(..., weights_only=True) of a saved stack: torch.serialization.safe_globals(these).
NF4_EXPERT_SAFE_GLOBALS = (NF4ExpertTensor, _rebuild_nf4_experts)


def _dense(value: Any) -> Any:
    return value.get_original_weight() if isinstance(value, NF4ExpertTensor) else value


def _detach(self: NF4ExpertTensor) -> NF4ExpertTensor:
    return self._rebuilt()


def _clone(self: NF4ExpertTensor, **_: Any) -> NF4ExpertTensor:
    return self._rebuilt(**{name: getattr(self, name).clone() for name in _INNER})


def _to_copy(self: NF4ExpertTensor, **kwargs: Any) -> NF4ExpertTensor:
    # Codes stay codes: a device moves the inner tensors, a dtype is what it dequantizes to.
    device = kwargs.get("device") or self.device
    moved = {name: getattr(self, name).to(device) for name in _INNER}
    return self._rebuilt(**moved, dtype=kwargs.get("dtype") or self.dtype)


def _copy_(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    if not isinstance(self, NF4ExpertTensor):  # a float tensor reads the dequantized stack
        return self.copy_(_dense(src), non_blocking=non_blocking)
    if tuple(src.shape) != tuple(self.shape):
        raise ValueError(
            f"copy_ into an NF4ExpertTensor of shape {tuple(self.shape)} from shape {tuple(src.shape)}"
        )
    if not (
        isinstance(src, NF4ExpertTensor)
        and (src.block_size, src.scaler_block_size) == (self.block_size, self.scaler_block_size)
    ):  # a float tensor (or other blocks): quantize it like this one
        src = to_nf4_experts(
            _dense(src).to(self.nf4.dtype), self.block_size, self.scaler_block_size
        )
    for name in _INNER:
        getattr(self, name).copy_(getattr(src, name), non_blocking=non_blocking)
    return self


def _is_pinned(self: NF4ExpertTensor, device: Any = None) -> bool:
    return bool(self.quantized_data.is_pinned())


# Tensor methods (by name) that do not read the values; property getters are `__get__`.
_KEEP_QUANTIZED = frozenset({
    "__get__", "__set__", "__reduce_ex__", "__deepcopy__", "__repr__", "__format__",
    "detach", "detach_", "requires_grad_", "to", "cpu", "cuda", "copy_", "clone", "is_pinned",
    "size", "dim", "numel", "stride", "element_size", "is_floating_point", "is_contiguous",
    "_has_compatible_shallow_copy_type", "share_memory_", "is_shared",
})  # fmt: skip

_OPS: dict[Any, Any] = {
    _aten.detach.default: _detach,
    _aten.clone.default: _clone,
    _aten._to_copy.default: _to_copy,
    _aten.copy_.default: _copy_,
    _aten.is_pinned.default: _is_pinned,
}


def is_nf4_experts(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (or a Parameter's data) is an ``NF4ExpertTensor``."""
    return isinstance(tensor, NF4ExpertTensor) or isinstance(
        getattr(tensor, "data", None), NF4ExpertTensor
    )


def to_nf4_experts(
    weight: torch.Tensor, block_size: int = 64, scaler_block_size: int = 256
) -> NF4ExpertTensor:
    """Quantize a stacked weight to NF4, as torchao's ``to_nf4`` of its ``[E * out, in]`` view.

    Args:
        weight: [E, out, in] float tensor (detached).
        block_size: elements sharing one absmax scale.
        scaler_block_size: scales sharing one second-level scale.

    Raises:
        ValueError: ``weight`` is not 3-D floating, or ``E * out * in`` is not a multiple of
            ``block_size * scaler_block_size``.
    """
    import_torchao()
    from torchao.quantization import to_nf4

    if weight.dim() != 3 or not weight.dtype.is_floating_point:
        raise ValueError(
            f"to_nf4_experts expects a float [E, out, in] tensor, got shape "
            f"{tuple(weight.shape)} of {weight.dtype}"
        )
    quantum = block_size * scaler_block_size
    if weight.numel() % quantum:
        raise ValueError(
            f"stacked weight of shape {tuple(weight.shape)} ({weight.numel()} elements): NF4 needs "
            f"a multiple of block_size*scaler_block_size = {quantum}"
        )
    experts, out_features, in_features = weight.shape
    flat = to_nf4(
        weight.detach().reshape(experts * out_features, in_features).contiguous(),
        block_size,
        scaler_block_size,
    )
    return NF4ExpertTensor(
        *(getattr(flat, name) for name in _INNER),
        shape=weight.shape, dtype=weight.dtype, block_size=block_size,
        scaler_block_size=scaler_block_size,
    )  # fmt: skip


def select_expert_params(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[str]:
    """Names of the 3-D floating Parameters to quantize, in model order.

    Args:
        model: the model to search.
        include: ``fnmatch`` patterns on parameter names (``"*experts.gate_up_proj"``); None for
            every 3-D floating Parameter.
        exclude: patterns removed after ``include``; expert-LoRA factors always are.

    Raises:
        ValueError: an ``include`` pattern matched no 3-D Parameter (naming the ones there are).
    """
    if isinstance(include, str):
        raise TypeError(f"include must be a sequence of patterns, got the string {include!r}")
    excluded = (*_ADAPTER_PARAM_PATTERNS, *exclude)
    stacked = [n for n, p in model.named_parameters() if p.dim() == 3 and p.dtype.is_floating_point]
    stacked = [n for n in stacked if not any(fnmatch.fnmatchcase(n, p) for p in excluded)]
    if include is None:
        return stacked
    unmatched = [p for p in include if not any(fnmatch.fnmatchcase(n, p) for n in stacked)]
    if unmatched:
        raise ValueError(
            f"include patterns {unmatched} match no 3-D parameter; 3-D parameters are "
            f"{stacked[:6]}{' ...' if len(stacked) > 6 else ''}"
        )
    return [n for n in stacked if any(fnmatch.fnmatchcase(n, p) for p in include)]


def to_nf4_expert_weights(
    model: nn.Module,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    block_size: int = 64,
    scaler_block_size: int = 256,
) -> NF4Stats:
    """Convert the chosen frozen stacked expert Parameters to ``NF4ExpertTensor`` in place.

    Run it before adding adapters (the frozen base of QLoRA). A model without 3-D Parameters
    gets nothing converted (empty stats).

    Args:
        model: model whose base weights are frozen.
        include: ``fnmatch`` patterns on parameter names; None for every 3-D floating Parameter.
        exclude: patterns to keep in float.
        block_size: elements sharing one absmax scale.
        scaler_block_size: scales sharing one second-level (double-quantization) scale.

    Returns:
        ``NF4Stats`` with the converted parameter names in ``modules`` and the measured bytes.

    Raises:
        ValueError: a chosen parameter is trainable, already NF4, or its element count is not a
            multiple of ``block_size * scaler_block_size``, naming it and its shape.
    """
    names = select_expert_params(model, include, exclude)
    params = dict(model.named_parameters())
    quantum = block_size * scaler_block_size
    for name in names:
        param = params[name]
        if is_nf4_experts(param):
            raise ValueError(f"parameter {name!r} already holds an NF4ExpertTensor")
        if param.requires_grad:
            raise ValueError(
                f"parameter {name!r} requires grad; NF4 weights are frozen, call "
                "requires_grad_(False) on the base weights first"
            )
        if param.numel() % quantum:
            raise ValueError(
                f"parameter {name!r} of shape {tuple(param.shape)} ({param.numel()} elements): NF4 "
                f"needs a multiple of block_size*scaler_block_size = {quantum}; exclude it"
            )
    num_params = float_bytes = nf4_bytes = 0
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        dense = owner._parameters[leaf]
        assert dense is not None
        stack = to_nf4_experts(dense.detach(), block_size, scaler_block_size)
        # Set in _parameters directly: an adapter may have made the name a property already.
        owner._parameters[leaf] = nn.Parameter(stack, requires_grad=False)
        num_params += dense.numel()
        float_bytes += dense.numel() * dense.element_size()
        nf4_bytes += tensor_storage_bytes(stack)
    stats = NF4Stats(tuple(names), num_params, float_bytes, nf4_bytes)
    if names:
        logger.info(
            "NF4 experts: %d stacks, %d params, %.3f bytes/param (was %d bytes, now %d)",
            len(names), num_params, stats.bytes_per_param, float_bytes, nf4_bytes,
        )  # fmt: skip
    return stats
