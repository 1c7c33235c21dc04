"""tune.dist: FSDP2, tensor and expert parallel, activation checkpointing and offloading from plain torchrun environments.

``parallelize(model, ParallelPlan(...))`` applies them in one documented order. Names are imported
on first use (PEP 562), so a command line that imports ``tune.dist.launch`` does not import torch.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from tune.dist._version import __version__

_EXPORTS = {
    "activation_checkpointing": ("apply_activation_checkpointing",),
    "activation_offloading": (
        "ActivationOffloader",
        "apply_activation_offloading",
        "offload_activations",
    ),
    "context_batches": ("ContextSplit", "context_parallel_batch", "context_split", "padded_batch"),
    "context_parallel": (
        "RingAttentionFn",
        "context_parallel_attention",
        "ring_attention",
        "zigzag_chunks",
        "zigzag_indices",
        "zigzag_shard",
        "zigzag_unshard",
    ),
    "data_parallel": ("DataParallel", "setup_data_parallel"),
    "environment": (
        "DistributedInfo",
        "default_backend",
        "destroy_distributed",
        "init_distributed",
        "read_environment",
        "seed_everything",
    ),
    "expert_parallel": (
        "MOE_EP_PLAN",
        "all_to_all_rows",
        "apply_ep",
        "apply_expert_fsdp",
        "expert_parallel_modules",
    ),
    "fsdp": ("apply_fsdp", "set_gradient_sync"),
    "mesh": (
        "build_context_mesh",
        "build_expert_mesh",
        "build_mesh",
        "context_data_rank_and_size",
        "data_parallel_mesh",
        "data_parallel_rank_and_size",
        "resolve_mesh_shape",
    ),
    "layout_search": ("LayoutChoice", "candidate_layouts", "recommend_layout"),
    "memory_layout": (
        "GIB",
        "OPTIMIZER_STATE",
        "PIPELINE_IN_FLIGHT",
        "MemoryEstimate",
        "ModelShape",
        "ParameterCounts",
        "TrainingLayout",
    ),
    "memory_plan": ("estimate_memory", "estimate_stages", "saved_activation_elements"),
    "module_matching": ("ModuleMatch", "find_modules"),
    "parallelize": ("PARALLELIZE_ORDER", "ParallelPlan", "parallelize"),
    "pipeline_batches": ("PipelineBatches",),
    "pipeline_training": ("PipelinedModel", "setup_pipeline_parallel", "stage_module"),
    "pipeline": (
        "SCHEDULES",
        "StageLayers",
        "TokenNormalisedLoss",
        "build_pipeline_mesh",
        "build_pipeline_schedule",
        "layer_ranges",
        "pipeline_stages",
        "schedule_style",
        "stage_ids",
        "sync_tied_gradients",
        "token_normalised_loss",
    ),
    "reductions": ("all_reduce", "all_reduce_sum", "any_rank", "count_target_tokens"),
    "signals": ("StopSignalHandler",),
    "state_dict": (
        "gather_full_optimizer_state_dict",
        "gather_full_state_dict",
        "load_full_state_dict",
    ),
    "tensor_parallel": ("STYLES", "apply_tp", "match_plan"),
    "launch": (
        "add_torchrun_arguments",
        "build_torchrun_argv",
        "launch_world_size",
        "run_torchrun",
        "torchrun_args",
    ),
}

if TYPE_CHECKING:
    from tune.dist.activation_checkpointing import apply_activation_checkpointing
    from tune.dist.activation_offloading import (
        ActivationOffloader,
        apply_activation_offloading,
        offload_activations,
    )
    from tune.dist.context_batches import (
        ContextSplit,
        context_parallel_batch,
        context_split,
        padded_batch,
    )
    from tune.dist.context_parallel import (
        RingAttentionFn,
        context_parallel_attention,
        ring_attention,
        zigzag_chunks,
        zigzag_indices,
        zigzag_shard,
        zigzag_unshard,
    )
    from tune.dist.data_parallel import DataParallel, setup_data_parallel
    from tune.dist.environment import (
        DistributedInfo,
        default_backend,
        destroy_distributed,
        init_distributed,
        read_environment,
        seed_everything,
    )
    from tune.dist.expert_parallel import (
        MOE_EP_PLAN,
        all_to_all_rows,
        apply_ep,
        apply_expert_fsdp,
        expert_parallel_modules,
    )
    from tune.dist.fsdp import apply_fsdp, set_gradient_sync
    from tune.dist.launch import (
        add_torchrun_arguments,
        build_torchrun_argv,
        launch_world_size,
        run_torchrun,
        torchrun_args,
    )
    from tune.dist.layout_search import LayoutChoice, candidate_layouts, recommend_layout
    from tune.dist.memory_layout import (
        GIB,
        OPTIMIZER_STATE,
        PIPELINE_IN_FLIGHT,
        MemoryEstimate,
        ModelShape,
        ParameterCounts,
        TrainingLayout,
    )
    from tune.dist.memory_plan import (
        estimate_memory,
        estimate_stages,
        saved_activation_elements,
    )
    from tune.dist.mesh import (
        build_context_mesh,
        build_expert_mesh,
        build_mesh,
        context_data_rank_and_size,
        data_parallel_mesh,
        data_parallel_rank_and_size,
        resolve_mesh_shape,
    )
    from tune.dist.module_matching import ModuleMatch, find_modules
    from tune.dist.parallelize import PARALLELIZE_ORDER, ParallelPlan, parallelize
    from tune.dist.pipeline_batches import PipelineBatches
    from tune.dist.pipeline_training import PipelinedModel, setup_pipeline_parallel, stage_module
    from tune.dist.pipeline import (
        SCHEDULES,
        StageLayers,
        TokenNormalisedLoss,
        build_pipeline_mesh,
        build_pipeline_schedule,
        layer_ranges,
        pipeline_stages,
        schedule_style,
        stage_ids,
        sync_tied_gradients,
        token_normalised_loss,
    )
    from tune.dist.reductions import all_reduce, all_reduce_sum, any_rank, count_target_tokens
    from tune.dist.signals import StopSignalHandler
    from tune.dist.state_dict import (
        gather_full_optimizer_state_dict,
        gather_full_state_dict,
        load_full_state_dict,
    )
    from tune.dist.tensor_parallel import STYLES, apply_tp, match_plan
else:

    class _Package(types.ModuleType):
        # A submodule import binds its name on the package; ``parallelize`` stays the function.
        def __setattr__(self, name: str, value: Any) -> None:
            if not (isinstance(value, types.ModuleType) and name in _OWNER):
                super().__setattr__(name, value)

    def __getattr__(name: str) -> Any:
        """Import an exported name's module on first use (PEP 562)."""
        if name not in _OWNER:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{_OWNER[name]}"), name)
        globals()[name] = value
        return value

    _OWNER = {name: module for module, names in _EXPORTS.items() for name in names}
    sys.modules[__name__].__class__ = _Package


__all__ = [
    "GIB",
    "MOE_EP_PLAN",
    "OPTIMIZER_STATE",
    "PARALLELIZE_ORDER",
    "PIPELINE_IN_FLIGHT",
    "SCHEDULES",
    "STYLES",
    "ActivationOffloader",
    "ContextSplit",
    "DataParallel",
    "DistributedInfo",
    "LayoutChoice",
    "MemoryEstimate",
    "ModelShape",
    "ModuleMatch",
    "ParallelPlan",
    "PipelineBatches",
    "PipelinedModel",
    "ParameterCounts",
    "RingAttentionFn",
    "StageLayers",
    "StopSignalHandler",
    "TokenNormalisedLoss",
    "TrainingLayout",
    "__version__",
    "add_torchrun_arguments",
    "all_reduce",
    "all_reduce_sum",
    "all_to_all_rows",
    "any_rank",
    "apply_activation_checkpointing",
    "apply_activation_offloading",
    "apply_ep",
    "apply_expert_fsdp",
    "apply_fsdp",
    "apply_tp",
    "build_context_mesh",
    "build_expert_mesh",
    "build_mesh",
    "build_pipeline_mesh",
    "build_pipeline_schedule",
    "build_torchrun_argv",
    "candidate_layouts",
    "context_data_rank_and_size",
    "context_parallel_attention",
    "context_parallel_batch",
    "context_split",
    "count_target_tokens",
    "data_parallel_mesh",
    "data_parallel_rank_and_size",
    "default_backend",
    "destroy_distributed",
    "estimate_memory",
    "estimate_stages",
    "expert_parallel_modules",
    "find_modules",
    "gather_full_optimizer_state_dict",
    "gather_full_state_dict",
    "init_distributed",
    "launch_world_size",
    "layer_ranges",
    "load_full_state_dict",
    "match_plan",
    "offload_activations",
    "padded_batch",
    "parallelize",
    "pipeline_stages",
    "read_environment",
    "recommend_layout",
    "resolve_mesh_shape",
    "ring_attention",
    "run_torchrun",
    "saved_activation_elements",
    "schedule_style",
    "seed_everything",
    "set_gradient_sync",
    "setup_pipeline_parallel",
    "setup_data_parallel",
    "stage_ids",
    "stage_module",
    "sync_tied_gradients",
    "token_normalised_loss",
    "torchrun_args",
    "zigzag_chunks",
    "zigzag_indices",
    "zigzag_shard",
    "zigzag_unshard",
]
