"""NF4 (4-bit NormalFloat) storage of frozen Linear weights, the base of QLoRA."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tune.quant._torchao import import_torchao
from tune.quant.memory import tensor_storage_bytes
from tune.quant.module_filter import ModuleFilter, select_linear_modules

if TYPE_CHECKING:
    from torchao.quantization import NF4Tensor

__all__ = ["NF4Stats", "nf4_shardable", "nf4_storage_bytes", "to_nf4_linear_weights"]

# The inner tensors an NF4 weight is split into when FSDP2 shards it along dim 0.
_SHARDED_INNER_TENSORS = ("quantized_scalers", "quantization_factor", "quantized_data")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NF4Stats:
    """What an NF4 conversion did.

    Args:
        modules: FQNs of the converted Linear modules.
        num_params: weight elements converted.
        float_bytes: bytes those weights took before.
        nf4_bytes: bytes they take as NF4, codes, scales and lookup table included (measured on
            the tensors' storages).
    """

    modules: tuple[str, ...]
    num_params: int
    float_bytes: int
    nf4_bytes: int

    @property
    def bytes_per_param(self) -> float:
        """NF4 bytes per converted weight element."""
        return self.nf4_bytes / max(self.num_params, 1)


def is_nf4(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is torchao's ``NF4Tensor`` (checked without importing torchao: none
    exists before torchao is imported)."""
    nf4_class = getattr(sys.modules.get("torchao.quantization"), "NF4Tensor", None)
    return nf4_class is not None and isinstance(tensor, nf4_class)


def nf4_storage_bytes(tensor: NF4Tensor) -> int:
    """Bytes held by an NF4 tensor's inner tensors: codes, scales, lookup table (measured).

    Args:
        tensor: an ``NF4Tensor``.
    """
    return tensor_storage_bytes(tensor)


def nf4_shardable(weight: torch.Tensor, num_shards: int) -> bool:
    """Whether FSDP2 can split ``weight`` (an ``NF4Tensor``) evenly into ``num_shards`` along dim 0.

    Every inner tensor (codes, first-level scales, second-level factors) must split evenly: a
    weight of fewer than ``num_shards * block_size * scaler_block_size`` elements cannot. Such a
    frozen weight can stay whole on every rank (``fully_shard(..., ignored_params=...)``).
    Plain tensors are always shardable; a stacked ``NF4ExpertTensor`` never is (it has no FSDP2
    all-gather hooks), so it stays whole, 4-bit, on every rank.

    Args:
        weight: a parameter's data, ``[out_features, in_features]`` (or ``[E, out, in]``).
        num_shards: data-parallel world size.
    """
    from tune.quant.nf4_experts import is_nf4_experts

    if is_nf4_experts(weight):
        return False
    if not is_nf4(weight):
        return True
    if weight.size(0) % num_shards:
        return False
    return all(getattr(weight, name).numel() % num_shards == 0 for name in _SHARDED_INNER_TENSORS)


def unshardable_nf4_params(model: nn.Module, num_shards: int) -> list[nn.Parameter]:
    """Frozen NF4 weights of ``model`` that FSDP2 cannot split over ``num_shards`` ranks.

    Pass them as ``fully_shard(..., ignored_params=...)``: they stay whole on every rank. Linear
    weights qualify only below ``num_shards * block_size * scaler_block_size`` elements (16,384
    per shard with the defaults), so keeping them whole costs little memory; stacked expert
    weights (``NF4ExpertTensor``) always qualify and are replicated at 4 bits.
    """
    kept = [
        (name, p)
        for name, p in model.named_parameters()
        if not p.requires_grad and not nf4_shardable(p.data, num_shards)
    ]
    if kept:
        logger.info(
            "%d NF4 weights FSDP2 cannot split over %d ranks (small, or expert stacks) stay "
            "whole on each (%s...)",
            len(kept), num_shards, ", ".join(n for n, _ in kept[:3]),
        )  # fmt: skip
    return [p for _, p in kept]


def to_nf4_linear_weights(
    model: nn.Module,
    *,
    include: ModuleFilter = None,
    exclude: Sequence[str] = (),
    block_size: int = 64,
    scaler_block_size: int = 256,
) -> NF4Stats:
    """Convert the chosen Linear weights to frozen NF4 tensors in place (adapters excluded).

    The weights stay NF4: ``F.linear`` dequantizes per call, and gradients flow to the input (and to
    LoRA adapters around the layer), never to the NF4 weight.

    Args:
        model: model whose base Linear weights are frozen (or about to be).
        include: module-name patterns, a callable ``(module, fqn) -> bool``, or None for all Linears.
        exclude: module-name patterns to keep in float.
        block_size: elements sharing one absmax scale.
        scaler_block_size: scales sharing one second-level (double-quantization) scale.

    Returns:
        Counts and measured bytes before and after.

    Raises:
        ValueError: a chosen weight is trainable, already quantized, or its element count is not a
            multiple of ``block_size * scaler_block_size``, naming the module and its shape.
    """
    import_torchao()
    from torchao.quantization import to_nf4

    fqns = select_linear_modules(model, include, exclude)
    modules = dict(model.named_modules())
    quantum = block_size * scaler_block_size
    for fqn in fqns:
        weight = modules[fqn].weight
        if is_nf4(weight):
            raise ValueError(f"module {fqn!r} already holds an NF4 weight")
        if weight.requires_grad:
            raise ValueError(
                f"module {fqn!r}: weight requires grad; NF4 weights are frozen, "
                f"call requires_grad_(False) on the base weights first"
            )
        if weight.numel() % quantum != 0:
            raise ValueError(
                f"module {fqn!r} has weight of shape {tuple(weight.shape)} ({weight.numel()} elements): "
                f"NF4 needs a multiple of block_size*scaler_block_size = {quantum}; exclude it"
            )
    num_params = float_bytes = nf4_bytes = 0
    for fqn in fqns:
        module = modules[fqn]
        weight = module.weight.detach()
        nf4 = to_nf4(weight, block_size, scaler_block_size)
        module.weight = nn.Parameter(nf4, requires_grad=False)
        num_params += weight.numel()
        float_bytes += weight.numel() * weight.element_size()
        nf4_bytes += nf4_storage_bytes(nf4)
    stats = NF4Stats(tuple(fqns), num_params, float_bytes, nf4_bytes)
    logger.info(
        "NF4: %d modules, %d params, %.3f bytes/param", len(fqns), num_params, stats.bytes_per_param
    )
    return stats
