"""A recipe's parallel layout: tune.dist's ``parallelize`` with tune.models' blocks, TP and EP
plans.

``parallelize_models`` applies, in tune.dist's order, tensor parallel, expert parallel (a
mixture-of-experts model with ``distributed.ep_size`` > 1), activation checkpointing /
offloading, compile and FSDP2 to the trained model and the frozen ones (teacher, reference).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from tune.dist import DataParallel, ModuleMatch, ParallelPlan, build_expert_mesh, parallelize
from tune.dist import setup_data_parallel as _setup_data_parallel
from tune.models import TransformerBlock, TransformersCausalLM, ep_plan, tp_plan
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
    """TP (``tp_size`` > 1), EP (``ep_size`` > 1), checkpointing/offloading, compile, FSDP2: the
    trained model first.

    With ``ep_size`` > 1 every model with routed experts (tune.models' ``ep_plan``) splits them
    over groups of ``ep_size`` data-parallel ranks; a dense frozen model is left whole.

    Args:
        models: the trained model, then frozen ones (teacher, reference; None entries skipped).
            Frozen models keep no activations: no checkpointing or offloading.
        dp: from ``setup_data_parallel`` (one process: only the wrappers and compile apply).
        settings: the config's ``distributed`` section.
        model_config: the trained model's config, for its ``tp_plan``; a frozen model's plan is
            read from its own modules (a teacher may be another architecture). EP plans are
            read from each model's modules.
        activation_checkpointing: recompute the trained model's block activations in backward.
        activation_offloading: keep the trained model's saved activations in host memory.
        compile: ``torch.compile`` every block of every model.
        sequence_parallel: TP plans that also split norms and activations along the sequence;
            False for a model that decodes (GRPO rollouts: a one-token step cannot be split).
    """
    fsdp = dp.distributed and settings.fsdp
    tp = dp.distributed and settings.tp_size > 1
    ep = dp.distributed and settings.ep_size > 1
    plan = ParallelPlan(
        block=TransformerBlock, mesh=dp.mesh, compile=compile, fsdp=fsdp,
        reshard_after_forward=settings.reshard_after_forward, cpu_offload=settings.cpu_offload,
        expert_mesh=build_expert_mesh(dp.mesh, settings.ep_size) if ep and dp.mesh else None,
    )  # fmt: skip
    for index, model in enumerate(models):
        if model is None:
            continue
        trained = index == 0
        experts = (ep_plan(model) or None) if ep else None  # read from the model's modules
        if trained and ep and experts is None:
            raise ValueError(
                f"distributed.ep_size={settings.ep_size}: the trained model has no routed experts "
                f"(layers.<i>.mlp.experts of a native MoE family); use ep_size=1"
            )
        applied = parallelize(model, dataclasses.replace(
            plan, block=decoder_blocks(model), ep_plan=experts,
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
