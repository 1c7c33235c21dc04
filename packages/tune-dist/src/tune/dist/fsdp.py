"""FSDP2 (``fully_shard``) applied per transformer block, then to the root."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from tune.dist.module_matching import ModuleMatch, describe, find_modules

logger = logging.getLogger(__name__)


def _check_no_shared_params_across_groups(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> None:
    """Tied parameters must live in one FSDP group: refuse a block that shares one outside it."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for block_name, block in blocks:
        prefix = block_name + "."
        for local_name, param in block.named_parameters():
            outside = [n for n in owners[id(param)] if not n.startswith(prefix)]
            if outside:
                raise ValueError(
                    f"parameter {prefix}{local_name} is shared with {outside}, outside the FSDP "
                    f"block {block_name!r}; tied parameters (e.g. tied embeddings) must be in one "
                    f"FSDP group: leave those modules to the root group (do not match them)"
                )


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh | None = None,
    *,
    block_match: ModuleMatch,
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
    ignored_params: Iterable[nn.Parameter] = (),
) -> nn.Module:
    """Shard every matched block with ``fully_shard``, then the root (everything left over).

    Frozen parameters (a LoRA base) may share a group with trainable ones. Tied parameters
    (``output.weight is tok_embeddings.weight``) stay correct as long as both owners fall in the
    same group; the default root group does that, and a block that shares a parameter with
    anything outside it is refused.

    Args:
        model: a plain single-device model; modified in place (its class becomes an FSDPModule).
        mesh: 1-D data-parallel mesh (FSDP) or 2-D (replicate, shard) mesh (HSDP); None uses
            the default process group.
        block_match: which blocks get their own group: a class, tuple of classes, a name
            pattern such as ``"layers.*"`` (fnmatch, or ``"re:<regex>"``) or a predicate
            ``(name, module) -> bool``. Nested matches are ignored (outermost wins).
        reshard_after_forward: free gathered block parameters after forward (less memory, one
            more all-gather in backward). The root keeps its parameters gathered either way.
        param_dtype: dtype of the gathered parameters for compute (e.g. torch.bfloat16).
        reduce_dtype: dtype of gradient reduction (e.g. torch.float32).
        cpu_offload: keep sharded parameters, gradients and optimizer state on the CPU.
        ignored_params: frozen parameters kept whole (not sharded) on every rank, e.g. a
            quantized weight whose inner tensors cannot be split evenly across the mesh. Their
            gradients are never reduced, so a trainable one is refused.

    Returns:
        The same model object, sharded.
    """
    if isinstance(model, FSDPModule):
        raise ValueError(f"{type(model).__name__} is already sharded with fully_shard")
    blocks = find_modules(model, block_match)
    if not blocks:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ValueError(
            f"block_match {describe(block_match)} matched no submodule of "
            f"{type(model).__name__}; first module names are {names}"
        )
    _check_no_shared_params_across_groups(model, blocks)
    ignored = set(ignored_params)
    param_names = {id(p): n for n, p in model.named_parameters()}
    trainable = sorted(param_names.get(id(p), "<not in model>") for p in ignored if p.requires_grad)
    if trainable:
        raise ValueError(
            f"ignored_params must be frozen (their gradients would not be reduced): {trainable[:5]}"
        )
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    offload_policy: OffloadPolicy = (
        CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    )
    for _name, block in blocks:
        fully_shard(
            block,
            mesh=mesh,
            reshard_after_forward=reshard_after_forward,
            mp_policy=mp_policy,
            offload_policy=offload_policy,
            ignored_params=ignored or None,
        )
    # The root's parameters (embeddings, final norm, LM head) are needed right at the start of
    # backward, so resharding them after forward would only add an all-gather.
    fully_shard(
        model,
        mesh=mesh,
        reshard_after_forward=False,
        mp_policy=mp_policy,
        offload_policy=offload_policy,
        ignored_params=ignored or None,
    )
    if ignored:
        logger.info("FSDP2 keeps %d frozen parameters whole on every rank", len(ignored))
    logger.debug("fully_shard applied to %d blocks and the root", len(blocks))
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2: reduce-scatter gradients in the coming backward only when ``enabled``.

    Gradient accumulation turns it off for every micro-batch but the last of a step, so
    gradients are synchronised once per optimizer step. A no-op for a model without FSDP.
    """
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(enabled)
