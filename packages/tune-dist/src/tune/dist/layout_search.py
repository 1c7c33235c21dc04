"""Candidate parallel layouts over a world of ranks, cheapest in throughput first, and the
first that fits a device (``tune.dist.memory_plan``'s estimate of each)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from tune.dist.memory_layout import MemoryEstimate, ModelShape, ParameterCounts, TrainingLayout
from tune.dist.memory_plan import estimate_memory


@dataclass(frozen=True)
class LayoutChoice:
    """A candidate layout and its estimate."""

    layout: TrainingLayout
    estimate: MemoryEstimate
    fits: bool


def candidate_layouts(base: TrainingLayout, world_size: int) -> Iterator[TrainingLayout]:
    """Layouts over ``world_size`` ranks, cheapest in throughput first.

    Order: no CPU offload before offload, no checkpointing before checkpointing (kept on when
    ``base`` has it); within those, fewer ranks per model replica (``tp * pp * cp``) first, and
    at equal count TP before CP before PP (TP stays within a node; CP's ring overlaps with
    attention; a pipeline idles in its bubble). FSDP shards over the data-parallel ranks
    ``world / (tp * pp)``, which CP and EP groups are carved from: ``cp`` and ``base.ep_size``
    must divide them, and ``2 * cp`` the sequence (zig-zag chunks). PP degrees 2, 4, 8 dividing
    the world; CP degrees 2, 4, 8 only for sequences of 8192 tokens or more, or when ``base``
    has ``cp_size > 1``. A pipeline runs ``base.pp_microbatches`` micro-batches when ``base`` has
    one, else ``gcd(pp, micro_batch_size)`` (one per stage where the batch splits so).
    """
    degrees = (1, 2, 4, 8)
    cp_sizes = degrees if base.seq_len >= 8192 or base.cp_size > 1 else (1,)
    combos = []
    for tp, pp, cp in itertools.product(degrees, degrees, cp_sizes):
        dp, rest = divmod(world_size, tp * pp)
        if rest or dp % cp or dp % base.ep_size or (cp > 1 and base.seq_len % (2 * cp)):
            continue
        combos.append((tp * pp * cp, pp, cp, tp))
    combos.sort()
    checkpointing = (True,) if base.activation_checkpointing else (False, True)
    for offload in (False, True) if world_size > 1 else (False,):
        for ckpt in checkpointing:
            for _, pp, cp, tp in combos:
                microbatches = (base.pp_microbatches if base.pp_size > 1
                                else math.gcd(pp, base.micro_batch_size))  # fmt: skip
                yield dataclasses.replace(
                    base, tp_size=tp, fsdp_size=world_size // (tp * pp), pp_size=pp,
                    pp_microbatches=microbatches if pp > 1 else 1, cp_size=cp,
                    activation_checkpointing=ckpt, cpu_offload=offload,
                )  # fmt: skip


def recommend_layout(
    shape: ModelShape,
    params: ParameterCounts,
    base: TrainingLayout,
    *,
    world_size: int,
    device_bytes: int,
    margin: float = 0.1,
) -> list[LayoutChoice]:
    """Every candidate layout with its estimate; the first that fits is the recommendation.

    Args:
        shape: the model.
        params: its prepared parameters.
        base: the sequence, batch, dtype and optimizer (its parallel fields are replaced).
        world_size: ranks of the run.
        device_bytes: memory of one device.
        margin: fraction of ``device_bytes`` kept free (allocator fragmentation, CUDA context).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    budget = device_bytes * (1.0 - margin)
    choices = []
    for layout in candidate_layouts(base, world_size):
        est = estimate_memory(shape, params, layout)
        choices.append(LayoutChoice(layout, est, est.total <= budget))
    return choices
