"""Full (unsharded) state dicts: gather on rank 0 for saving, load on rank 0 and broadcast."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# torch.distributed.checkpoint costs ~0.5 s to import: its functions are imported where they are
# called, so importing tune.dist (a single-device run does) does not pay for it.

logger = logging.getLogger(__name__)


class _SequentialGatherNotice(logging.Filter):
    """Drops torch's notice that a 2-D-sharded DTensor (experts: EP x FSDP) is gathered in two
    all-gathers. Gathering a full copy is exact whatever the order; the notice came once per
    tensor of every save."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sequential all_gather" not in record.getMessage()


logging.getLogger("torch.distributed.tensor._redistribute").addFilter(_SequentialGatherNotice())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_full_state_dict(
    model: nn.Module, *, trainable_only: bool = False
) -> dict[str, torch.Tensor]:
    """The full model state dict on rank 0, in CPU memory; other ranks get ``{}``.

    Parameters are gathered one at a time (each DTensor all-gathered, copied to CPU, released),
    so device memory never holds more than one full parameter beyond the shards. Keys are the
    plain module names (FSDP, TP, checkpointing and offloading add no prefix).

    Args:
        model: a plain, FSDP-sharded and/or tensor-parallel model.
        trainable_only: keep only parameters with ``requires_grad`` (e.g. LoRA adapters).

    Returns:
        {name: full CPU tensor} on rank 0, ``{}`` elsewhere. Collective: call on every rank.
        For ``PipelinedModel.module`` (one pipeline rank's stages) every stage's parameters.
    """
    pipeline = getattr(model, "_tune_pipeline", None)
    if pipeline is not None:
        return pipeline.full_state_dict(trainable_only)  # type: ignore[no-any-return]
    if not _distributed():
        keep = (
            {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else None
        )
        return {
            name: tensor.detach().to("cpu", copy=True)
            for name, tensor in model.state_dict().items()
            if keep is None or name in keep
        }
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only
    )
    state: dict[str, torch.Tensor] = get_model_state_dict(model, options=options)  # type: ignore[assignment]
    if trainable_only:  # torch drops a frozen parameter under one name only: a tied alias stays
        trainable = _trainable_names(model)
        state = {name: tensor for name, tensor in state.items() if name in trainable}
    return state


def _trainable_names(model: nn.Module) -> set[str]:
    """Every name (tied aliases included) of a parameter that requires grad, without the
    prefixes that activation checkpointing and compile add."""
    return {
        ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)
        for name, param in model.named_parameters(remove_duplicate=False)
        if param.requires_grad
    }


_WRAPPER_PARTS = frozenset({"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module"})


def gather_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The full optimizer state dict keyed by parameter names, on rank 0 (``{}`` elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor] | None, *, strict: bool = True
) -> None:
    """Load a full state dict read on rank 0 only: broadcast it and keep each rank's shard.

    Typical use: build the model on the meta device on every rank, apply TP/FSDP, call
    ``model.to_empty(device=...)``, then read the checkpoint on rank 0 alone and call this.

    Args:
        model: a plain, FSDP-sharded and/or tensor-parallel model.
        state_dict: the full state dict on rank 0 (tensors on CPU); ignored on other ranks.
        strict: fail on missing or unexpected keys.
    """
    if not _distributed():
        if state_dict is None:
            raise ValueError("load_full_state_dict: state_dict is None in a single-process run")
        model.load_state_dict(state_dict, strict=strict)
        return
    # Rank 0 checks the keys and tells every rank, so a bad file fails all ranks at once
    # instead of leaving the others waiting in the broadcast.
    problem: list[str | None] = [None]
    if dist.get_rank() == 0:
        if state_dict is None:
            problem[0] = "rank 0 must pass the full state dict, got None"
        elif strict:
            expected = set(model.state_dict().keys())
            missing, unexpected = expected - set(state_dict), set(state_dict) - expected
            if missing or unexpected:
                problem[0] = (
                    f"full state dict does not match the model: missing {sorted(missing)[:8]}, "
                    f"unexpected {sorted(unexpected)[:8]}"
                )
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise KeyError(f"load_full_state_dict: {problem[0]}")
    # torch replaces the values of the dict it is given with the loaded shards: pass a copy so
    # the caller's full tensors stay as they were.
    full = dict(state_dict) if dist.get_rank() == 0 and state_dict is not None else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    set_model_state_dict(model, full, options=options)  # type: ignore[arg-type]
