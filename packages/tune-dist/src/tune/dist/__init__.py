"""tune.dist: FSDP2, tensor parallel, activation checkpointing and offloading from plain torchrun environments."""

from tune.dist._version import __version__
from tune.dist.activation_checkpointing import apply_activation_checkpointing
from tune.dist.activation_offloading import (
    ActivationOffloader,
    apply_activation_offloading,
    offload_activations,
)
from tune.dist.environment import (
    DistributedInfo,
    default_backend,
    destroy_distributed,
    init_distributed,
    read_environment,
)
from tune.dist.fsdp import apply_fsdp
from tune.dist.mesh import (
    build_mesh,
    data_parallel_mesh,
    data_parallel_rank_and_size,
    resolve_mesh_shape,
)
from tune.dist.module_matching import ModuleMatch, find_modules
from tune.dist.reductions import all_reduce, all_reduce_sum, any_rank, count_target_tokens
from tune.dist.signals import StopSignalHandler
from tune.dist.state_dict import (
    gather_full_optimizer_state_dict,
    gather_full_state_dict,
    load_full_state_dict,
)
from tune.dist.tensor_parallel import STYLES, apply_tp, match_plan

__all__ = [
    "STYLES",
    "ActivationOffloader",
    "DistributedInfo",
    "ModuleMatch",
    "StopSignalHandler",
    "__version__",
    "all_reduce",
    "all_reduce_sum",
    "any_rank",
    "apply_activation_checkpointing",
    "apply_activation_offloading",
    "apply_fsdp",
    "apply_tp",
    "build_mesh",
    "count_target_tokens",
    "data_parallel_mesh",
    "data_parallel_rank_and_size",
    "default_backend",
    "destroy_distributed",
    "find_modules",
    "gather_full_optimizer_state_dict",
    "gather_full_state_dict",
    "init_distributed",
    "load_full_state_dict",
    "match_plan",
    "offload_activations",
    "read_environment",
    "resolve_mesh_shape",
]
