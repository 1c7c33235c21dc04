"""A recipe's parallel layout: tune.dist's ``parallelize`` with tune.models' blocks and TP plans.

``parallelize_models`` applies, in tune.dist's order, tensor parallel, activation checkpointing /
offloading, compile and FSDP2 to the trained model and the frozen ones (teacher, reference).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from tune.dist import DataParallel, ModuleMatch, ParallelPlan, parallelize
from tune.dist import setup_data_parallel as _setup_data_parallel
from tune.models import TransformerBlock, TransformersCausalLM, tp_plan
from tune.quant import unshardable_nf4_params
from tune.recipes.common.config_sections import DistributedConfig
from tune.recipes.common.runtime import Runtime

logger = logging.getLogger(__name__)


def decoder_blocks(model: nn.Module) -> ModuleMatch:
    """The repeated block of a model: ``TransformerBlock``, or a transformers decoder layer."""
    return model.block_classes if isinstance(model, TransformersCausalLM) else TransformerBlock


def parallelize_models(
    models: Sequence[nn.Module | None],
    dp: DataParallel,
    settings: DistributedConfig,
    *,
    model_config: Any,
    activation_checkpointing: bool = False,
    activation_offloading: bool = False,
    compile: bool = False,
    sequence_parallel: bool = True,
) -> None:
    """TP (``tp_size`` > 1), checkpointing/offloading, compile, FSDP2: the trained model first.

    Args:
        models: the trained model, then frozen ones (teacher, reference; None entries skipped).
            Frozen models keep no activations: no checkpointing or offloading.
        dp: from ``setup_data_parallel`` (one process: only the wrappers and compile apply).
        settings: the config's ``distributed`` section.
        model_config: the trained model's config, for its ``tp_plan``; a frozen model's plan is
            read from its own modules (a teacher may be another architecture).
        activation_checkpointing: recompute the trained model's block activations in backward.
        activation_offloading: keep the trained model's saved activations in host memory.
        compile: ``torch.compile`` every block of every model.
        sequence_parallel: TP plans that also split norms and activations along the sequence;
            False for a model that decodes (GRPO rollouts: a one-token step cannot be split).
    """
    fsdp = dp.distributed and settings.fsdp
    tp = dp.distributed and settings.tp_size > 1
    plan = ParallelPlan(
        block=TransformerBlock, mesh=dp.mesh, compile=compile, fsdp=fsdp,
        reshard_after_forward=settings.reshard_after_forward, cpu_offload=settings.cpu_offload,
    )  # fmt: skip
    for index, model in enumerate(models):
        if model is None:
            continue
        trained = index == 0
        applied = parallelize(model, dataclasses.replace(
            plan, block=decoder_blocks(model),
            tp_plan=tp_plan(model_config if trained else model,
                            sequence_parallel=sequence_parallel) if tp else None,
            activation_checkpointing=activation_checkpointing and trained,
            activation_offloading=activation_offloading and trained,
            ignored_params=tuple(unshardable_nf4_params(model, dp.size)) if fsdp else (),
        ))  # fmt: skip
        if dp.distributed:  # e.g. a teacher never sits whole on one rank
            local = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())
            logger.info(
                "%s model: %s; %d of %d parameters on this rank", "trained" if trained else "frozen",
                " -> ".join(applied) or "as loaded", local, sum(p.numel() for p in model.parameters()),
            )  # fmt: skip


def setup_data_parallel(rt: Runtime, *, tp_size: int = 1) -> DataParallel:
    """``tune.dist.setup_data_parallel`` on ``rt``'s device (one process: no mesh, no reduce)."""
    if not rt.dist.is_distributed:
        return DataParallel()
    return _setup_data_parallel(tp_size, device_type=rt.device.type)
