"""Device meshes with data-parallel replicate/shard and tensor-parallel dimensions, and the
expert and context meshes that expert and context parallelism carve out of the data-parallel shard
dimension."""

from __future__ import annotations

import logging

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

logger = logging.getLogger(__name__)

DP_REPLICATE = "dp_replicate"
DP_SHARD = "dp_shard"
TP = "tp"
MESH_DIMS = (DP_REPLICATE, DP_SHARD, TP)
EXPERT_DP_SHARD = "expert_dp_shard"
EP = "ep"
EXPERT_MESH_DIMS = (DP_REPLICATE, EXPERT_DP_SHARD, EP, TP)
CP_DP_SHARD = "cp_dp_shard"
CP = "cp"
CONTEXT_MESH_DIMS = (DP_REPLICATE, CP_DP_SHARD, CP, TP)


def resolve_mesh_shape(
    world_size: int, dp_replicate: int = 1, dp_shard: int = -1, tp: int = 1
) -> tuple[int, int, int]:
    """Fill in one ``-1`` degree so that dp_replicate * dp_shard * tp == world_size.

    Args:
        world_size: number of ranks.
        dp_replicate: replicas of the model (HSDP outer dimension).
        dp_shard: FSDP shard group size; -1 takes what the other degrees leave.
        tp: tensor-parallel degree (ranks sharing one layer's weights).

    Returns:
        (dp_replicate, dp_shard, tp).
    """
    degrees = {DP_REPLICATE: dp_replicate, DP_SHARD: dp_shard, TP: tp}
    unknown = [name for name, d in degrees.items() if d == -1]
    bad = {name: d for name, d in degrees.items() if d == 0 or d < -1}
    if bad:
        raise ValueError(f"mesh degrees must be positive or -1, got {bad}")
    if len(unknown) > 1:
        raise ValueError(f"at most one mesh degree may be -1, got {unknown} as -1")
    known = 1
    for name, d in degrees.items():
        if name not in unknown:
            known *= d
    if unknown:
        if world_size % known:
            raise ValueError(
                f"world size {world_size} is not divisible by the product {known} of "
                f"the fixed degrees {degrees}"
            )
        degrees[unknown[0]] = world_size // known
    elif known != world_size:
        raise ValueError(
            f"dp_replicate * dp_shard * tp = {known} ({degrees}) but the world size is {world_size}"
        )
    return degrees[DP_REPLICATE], degrees[DP_SHARD], degrees[TP]


def build_mesh(
    dp_replicate: int = 1,
    dp_shard: int = -1,
    tp: int = 1,
    device_type: str | None = None,
) -> DeviceMesh:
    """Build a 3-D DeviceMesh named ("dp_replicate", "dp_shard", "tp") over the default group.

    Every dimension exists even with size 1, so code can always index ``mesh["tp"]``. Ranks are
    laid out with tp innermost, so tensor-parallel peers are neighbours (same node).

    Args:
        dp_replicate: replica groups (HSDP); 1 for plain FSDP.
        dp_shard: FSDP shard group size; -1 uses every rank not taken by the others.
        tp: tensor-parallel degree.
        device_type: "cuda" or "cpu"; None picks the device of the process group backend.

    Returns:
        The DeviceMesh; requires an initialised process group.
    """
    if not dist.is_initialized():
        raise RuntimeError(
            "build_mesh needs a process group: call tune.dist.init_distributed() first "
            "(under torchrun or another launcher)"
        )
    shape = resolve_mesh_shape(dist.get_world_size(), dp_replicate, dp_shard, tp)
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS)
    if dist.get_rank() == 0:
        logger.info("device mesh %s = %s on %s", MESH_DIMS, shape, device_type)
    return mesh


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The sub-mesh FSDP shards over: 1-D ``dp_shard``, or 2-D (replicate, shard) for HSDP."""
    if mesh.mesh_dim_names is None or DP_SHARD not in mesh.mesh_dim_names:
        raise ValueError(
            f"mesh has dimensions {mesh.mesh_dim_names}; expected one built by build_mesh "
            f"with {MESH_DIMS}"
        )
    if mesh[DP_REPLICATE].size() > 1:
        return mesh[DP_REPLICATE, DP_SHARD]
    return mesh[DP_SHARD]


def data_parallel_rank_and_size(mesh: DeviceMesh) -> tuple[int, int]:
    """This rank's index among data-parallel ranks and their count (for data sharding)."""
    replicate, shard = mesh[DP_REPLICATE], mesh[DP_SHARD]
    rank = replicate.get_local_rank() * shard.size() + shard.get_local_rank()
    return rank, replicate.size() * shard.size()


def _split_shard_dim(mesh: DeviceMesh, degree: int, dims: tuple[str, ...], what: str) -> DeviceMesh:
    # (dp_replicate, dp_shard, tp) -> (dp_replicate, dp_shard / degree, degree, tp), same ranks.
    if mesh.mesh_dim_names != MESH_DIMS:
        raise ValueError(
            f"mesh has dimensions {mesh.mesh_dim_names}; expected one built by build_mesh "
            f"with {MESH_DIMS}"
        )
    replicate, shard, tp = (mesh[d].size() for d in MESH_DIMS)
    if degree < 1 or shard % degree:
        raise ValueError(f"{what} degree {dims[2]}={degree} must divide dp_shard={shard}")
    if mesh.mesh.flatten().tolist() != list(range(mesh.size())):
        raise ValueError(f"the {what} mesh needs a mesh over ranks 0..world-1 in order")
    shape = (replicate, shard // degree, degree, tp)
    split = init_device_mesh(mesh.device_type, shape, mesh_dim_names=dims)
    if dist.get_rank() == 0:
        logger.info("%s mesh %s = %s", what, dims, shape)
    return split


def build_expert_mesh(mesh: DeviceMesh, ep: int) -> DeviceMesh:
    """The mesh experts live on: ``("dp_replicate", "expert_dp_shard", "ep", "tp")``, same ranks.

    Expert parallelism borrows its ranks from the data-parallel shard dimension: each group of
    ``ep`` consecutive ``dp_shard`` ranks splits the experts between them (``mesh["ep"]``), and
    the experts are FSDP-sharded over the ``dp_shard / ep`` groups (``mesh["expert_dp_shard"]``).
    Tensor-parallel peers (``tp``, innermost as in ``build_mesh``) hold the same tokens, so each
    keeps the same experts and runs its own all-to-all with the ranks of its ``tp`` index.
    Collective: call once on every rank (it creates process groups), after ``build_mesh``.

    Args:
        mesh: the mesh from ``build_mesh``.
        ep: expert-parallel degree; must divide ``mesh["dp_shard"].size()``.

    Returns:
        A 4-D DeviceMesh of shape (dp_replicate, dp_shard / ep, ep, tp).
    """
    return _split_shard_dim(mesh, ep, EXPERT_MESH_DIMS, "expert-parallel")


def build_context_mesh(mesh: DeviceMesh, cp: int) -> DeviceMesh:
    """The mesh context parallelism splits sequences on: ``("dp_replicate", "cp_dp_shard", "cp",
    "tp")``, same ranks.

    Each group of ``cp`` consecutive ``dp_shard`` ranks (``mesh["cp"]``) holds the same
    sequences, each rank a zig-zag share of their tokens; FSDP2 still shards over all of
    ``dp_shard`` (every rank's gradients are summed the same way). The data loader reads
    ``dp_size / cp`` shards: ``context_data_rank_and_size``. Collective: call once on every rank.

    Args:
        mesh: the mesh from ``build_mesh``.
        cp: context-parallel degree; must divide ``mesh["dp_shard"].size()``.

    Returns:
        A 4-D DeviceMesh of shape (dp_replicate, dp_shard / cp, cp, tp).
    """
    return _split_shard_dim(mesh, cp, CONTEXT_MESH_DIMS, "context-parallel")


def context_data_rank_and_size(mesh: DeviceMesh, cp: int) -> tuple[int, int]:
    """The data shard a rank reads when groups of ``cp`` data-parallel ranks share sequences:
    ``(data-parallel rank // cp, data-parallel size // cp)``."""
    rank, size = data_parallel_rank_and_size(mesh)
    if cp < 1 or size % cp:
        raise ValueError(f"context-parallel degree {cp} must divide the data-parallel size {size}")
    return rank // cp, size // cp
