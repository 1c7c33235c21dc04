"""One ``parallelize(model, plan)``: every parallelism and wrapper, applied in a fixed order.

The order (``PARALLELIZE_ORDER``) and why:

1. ``tp`` — tensor parallel first: its styles need the plain ``nn.Linear`` / ``nn.Embedding``
   modules and their names, and they turn weights into DTensors on the ``tp`` mesh dimension;
   FSDP must then see those DTensors to shard them along the data-parallel dimension (2-D).
2. ``ep`` — expert parallel: the experts modules named by ``ep_plan`` keep ``E / ep`` experts
   each (DTensors ``Shard(0)`` on ``expert_mesh["ep"]``) and exchange tokens with all-to-all.
   Before FSDP, which then shards those experts over ``expert_mesh["expert_dp_shard"]`` in
   groups of their own, ahead of the blocks (see ``tune.dist.expert_parallel``).
3. ``activation_checkpointing`` — wraps each block's forward in non-reentrant checkpointing.
4. ``activation_offloading`` — moves what each block still saves to host memory.
5. ``compile`` — ``torch.compile`` per block after the wrappers, so each compiled region is one
   whole wrapped block (the compiler sees the checkpointed region and plans its recomputation).
6. ``fsdp`` — FSDP2 last, per block then the root: it must see the final module tree and the
   final (TP-sharded) parameters, and its all-gathers must surround everything a block runs.

Context and pipeline parallelism slot in later at their own steps (CP as a mesh dimension with a
runtime context, PP first as a split of the model into stages), each with its own plan fields; a
plan without them behaves as today.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from tune.dist.activation_checkpointing import apply_activation_checkpointing
from tune.dist.activation_offloading import apply_activation_offloading
from tune.dist.mesh import EP, TP, data_parallel_mesh
from tune.dist.module_matching import ModuleMatch, describe, find_modules

if TYPE_CHECKING:
    from tune.dist.expert_parallel import EPPlan
    from tune.dist.tensor_parallel import TPPlan

# FSDP2 and TP import torch.distributed.tensor (~0.5 s with the sympy it pulls in): they are
# imported by the steps that apply them, so a single-device run does not pay for them.

logger = logging.getLogger(__name__)

PARALLELIZE_ORDER = ("tp", "ep", "activation_checkpointing", "activation_offloading", "compile", "fsdp")


@dataclass(frozen=True)
class ParallelPlan:
    """What ``parallelize`` applies to one model, as plain data.

    A frozen model (a teacher, a reference) takes the trained model's plan with
    ``activation_checkpointing`` and ``activation_offloading`` off: it keeps no activations.

    Args:
        block: the repeated blocks (a class, name pattern such as ``"layers.*"`` or predicate):
            the units of checkpointing, offloading, compile and FSDP groups.
        mesh: a mesh from ``build_mesh`` (dims ``dp_replicate``, ``dp_shard``, ``tp``), or None
            on one device / for FSDP over the default process group.
        tp_plan: ``{module-name pattern: style}`` (see ``apply_tp``), applied on ``mesh["tp"]``
            when that dimension is larger than 1; None: no tensor parallel.
        ep_plan: ``{module-name pattern: "grouped_experts"}`` (see ``apply_ep``), applied on
            ``expert_mesh["ep"]`` when that dimension is larger than 1; needs ``fsdp`` (the
            non-expert parameters are data-parallel over the EP ranks); None: no expert parallel.
            With ``tp_plan`` the MoE input must be replicated over ``tp`` (no sequence-parallel
            styles): tensor-parallel peers then keep the same experts.
        expert_mesh: the mesh from ``build_expert_mesh(mesh, ep)``, for ``ep_plan``.
        activation_checkpointing: recompute every block's activations in backward.
        activation_offloading: keep what blocks save for backward in host memory.
        compile: ``torch.compile`` each block.
        fsdp: shard with FSDP2 over the data-parallel mesh (``data_parallel_mesh(mesh)``).
        reshard_after_forward: FSDP frees gathered block parameters after forward.
        cpu_offload: FSDP keeps parameters, gradients and optimizer state on the CPU.
        param_dtype: FSDP compute dtype of gathered parameters (None: as stored).
        reduce_dtype: FSDP gradient reduction dtype (None: as the parameters).
        ignored_params: frozen parameters FSDP keeps whole on every rank (e.g. small NF4
            weights that cannot split evenly).
    """

    block: ModuleMatch
    mesh: DeviceMesh | None = None
    tp_plan: TPPlan | None = None
    ep_plan: EPPlan | None = None
    expert_mesh: DeviceMesh | None = None
    activation_checkpointing: bool = False
    activation_offloading: bool = False
    compile: bool = False
    fsdp: bool = False
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    param_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = None
    ignored_params: tuple[nn.Parameter, ...] = ()


def _tp_size(plan: ParallelPlan) -> int:
    if plan.mesh is None or plan.mesh.mesh_dim_names is None or TP not in plan.mesh.mesh_dim_names:
        return 1
    return plan.mesh[TP].size()


def _apply_tp(model: nn.Module, plan: ParallelPlan) -> bool:
    if plan.tp_plan is None:
        return False
    if plan.mesh is None:
        raise ValueError("ParallelPlan.tp_plan needs a mesh with a 'tp' dimension (build_mesh)")
    if _tp_size(plan) == 1:
        return False
    from tune.dist.tensor_parallel import apply_tp

    apply_tp(model, plan.mesh[TP], plan.tp_plan)
    return True


# Styles that leave activations sharded along the sequence between blocks.
_SEQUENCE_STYLES = frozenset(
    {"sequence_parallel", "colwise_seq", "rowwise_seq", "colwise_seq_rep", "embedding_rowwise_seq"}
)


def _apply_ep(model: nn.Module, plan: ParallelPlan) -> bool:
    if plan.ep_plan is None:
        return False
    if plan.expert_mesh is None:
        raise ValueError(
            "ParallelPlan.ep_plan needs expert_mesh=build_expert_mesh(mesh, ep) (an 'ep' dimension)"
        )
    if plan.expert_mesh[EP].size() == 1:
        return False
    if not plan.fsdp:
        raise ValueError(
            "ParallelPlan.ep_plan needs fsdp=True: the EP ranks read different data, so the "
            "non-expert parameters need FSDP's gradient reduction"
        )
    sequence_styles = sorted(
        {s for s in (plan.tp_plan or {}).values() if isinstance(s, str) and s in _SEQUENCE_STYLES}
    )
    if sequence_styles and _tp_size(plan) > 1:
        raise ValueError(
            f"ParallelPlan.ep_plan with tensor parallelism needs the MoE input replicated over "
            f"tp; the tp_plan has sequence-parallel styles {sequence_styles}: use the plain "
            f"(colwise/rowwise) plan"
        )
    from tune.dist.expert_parallel import apply_ep

    apply_ep(model, plan.expert_mesh, plan.ep_plan)
    return True


def _apply_checkpointing(model: nn.Module, plan: ParallelPlan) -> bool:
    if plan.activation_checkpointing:
        apply_activation_checkpointing(model, plan.block)
    return plan.activation_checkpointing


def _apply_offloading(model: nn.Module, plan: ParallelPlan) -> bool:
    if plan.activation_offloading:
        apply_activation_offloading(model, plan.block)
    return plan.activation_offloading


def _apply_compile(model: nn.Module, plan: ParallelPlan) -> bool:
    if not plan.compile:
        return False
    blocks = find_modules(model, plan.block)
    if not blocks:
        raise ValueError(f"block {describe(plan.block)} matched no submodule to compile")
    for _name, block in blocks:
        block.compile()
    return True


def _apply_fsdp(model: nn.Module, plan: ParallelPlan) -> bool:
    if not plan.fsdp:
        return False
    from tune.dist.fsdp import apply_fsdp

    dp_mesh = None if plan.mesh is None else data_parallel_mesh(plan.mesh)
    if plan.expert_mesh is not None:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        from tune.dist.expert_parallel import apply_expert_fsdp

        apply_expert_fsdp(
            model,
            plan.expert_mesh,
            reshard_after_forward=plan.reshard_after_forward,
            mp_policy=MixedPrecisionPolicy(
                param_dtype=plan.param_dtype, reduce_dtype=plan.reduce_dtype
            ),
            offload_policy=CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
            if plan.cpu_offload
            else OffloadPolicy(),
            ignored_params=set(plan.ignored_params) or None,
        )
    apply_fsdp(
        model,
        dp_mesh,
        block_match=plan.block,
        reshard_after_forward=plan.reshard_after_forward,
        param_dtype=plan.param_dtype,
        reduce_dtype=plan.reduce_dtype,
        cpu_offload=plan.cpu_offload,
        ignored_params=plan.ignored_params,
    )
    return True


_STEPS: dict[str, Callable[[nn.Module, ParallelPlan], bool]] = {
    "tp": _apply_tp,
    "ep": _apply_ep,
    "activation_checkpointing": _apply_checkpointing,
    "activation_offloading": _apply_offloading,
    "compile": _apply_compile,
    "fsdp": _apply_fsdp,
}


def parallelize(model: nn.Module, plan: ParallelPlan) -> list[str]:
    """Apply ``plan`` to ``model`` in place, in ``PARALLELIZE_ORDER`` (see the module docstring).

    Args:
        model: a plain single-device model (with adapters already injected, if any); it is
            modified in place (its class becomes an FSDP module with ``plan.fsdp``).
        plan: what to apply.

    Returns:
        The names of the steps applied, in order (e.g. ``["tp", "fsdp"]``).
    """
    applied = [name for name in PARALLELIZE_ORDER if _STEPS[name](model, plan)]
    logger.debug("parallelize %s: %s", type(model).__name__, applied or "nothing")
    return applied
