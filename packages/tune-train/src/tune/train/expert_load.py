"""Expert load of mixture-of-experts layers: metrics for the loggers and the routing-bias update.

A layer's load is the number of (token, slot) pairs routed to each of its ``E`` experts, summed
over the micro-batches of an optimizer step and over the data-parallel ranks. From it:

- ``max_over_mean``: the busiest expert's load over the mean load (1 when balanced; with
  expert parallelism, the slowest rank's share of the work).
- ``entropy``: entropy of ``load / sum(load)`` divided by ``log E`` (1 when balanced, 0 when
  every token goes to one expert).

``update_routing_bias`` is DeepSeek-V3's auxiliary-loss-free balancing: after each step,
``bias_i += rate * sign(mean(load) - load_i)`` on every block's ``routing_bias`` buffer (raised for
under-loaded experts, lowered for over-loaded ones), outside autograd. Every rank must apply the
same update, so the loads are summed over the data-parallel ranks first::

    loads = {name: summed_tokens_per_expert, ...}      # this rank, all micro-batches
    update_routing_bias(model, loads, rate=1e-3, reduce=distributed_sum())
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

AllReduce = Callable[[Tensor], Tensor]
_INDEX = re.compile(r"^\d+$")


def layer_label(name: str, position: int) -> str:
    """``layer{i}`` with ``i`` the first numeric part of a module name (``layers.3.mlp`` ->
    ``layer3``), else the block's position among the MoE blocks."""
    for part in name.split("."):
        if _INDEX.match(part):
            return f"layer{part}"
    return f"layer{position}"


def reduce_loads(loads: Mapping[str, Tensor], reduce: AllReduce | None) -> dict[str, Tensor]:
    """Sum each layer's [E] load over the data-parallel ranks with one ``reduce`` call.

    Args:
        loads: module name -> [E] load on this rank (same names and order on every rank).
        reduce: sums a tensor over ranks (e.g. ``tune.train.distributed_sum()``); None: as is.

    Returns:
        module name -> [E] float64 summed load.
    """
    names = list(loads)
    if not names:
        return {}
    sizes = [loads[n].numel() for n in names]
    packed = torch.cat([loads[n].detach().reshape(-1).to(torch.float64) for n in names])
    if reduce is not None:
        packed = reduce(packed)
    return dict(zip(names, torch.split(packed, sizes), strict=True))


def expert_load_metrics(
    loads: Mapping[str, Tensor], *, per_expert: bool = False, prefix: str = "moe/"
) -> dict[str, float]:
    """Flat per-layer load metrics and their mean over the layers, for the loggers.

    Args:
        loads: module name -> [E] summed load (already reduced over ranks).
        per_expert: also give every expert's load (``{prefix}layer{i}/expert{j}``).
        prefix: prepended to every key.

    Returns:
        ``{prefix}layer{i}/max_over_mean``, ``{prefix}layer{i}/entropy``,
        ``{prefix}layer{i}/tokens`` (routed pairs), and ``{prefix}max_over_mean``,
        ``{prefix}entropy`` (means over the layers). Layers that received no token are left out.
    """
    metrics: dict[str, float] = {}
    ratios, entropies = [], []
    for position, (name, load) in enumerate(loads.items()):
        values = [float(v) for v in load.detach().reshape(-1).double().tolist()]
        total, num_experts = sum(values), len(values)
        if total <= 0:
            continue
        label = f"{prefix}{layer_label(name, position)}"
        ratio = max(values) / (total / num_experts)
        entropy = -sum(v / total * math.log(v / total) for v in values if v > 0)
        normalised = entropy / math.log(num_experts) if num_experts > 1 else 1.0
        metrics[f"{label}/max_over_mean"] = ratio
        metrics[f"{label}/entropy"] = normalised
        metrics[f"{label}/tokens"] = total
        if per_expert:
            metrics.update({f"{label}/expert{j}": v for j, v in enumerate(values)})
        ratios.append(ratio)
        entropies.append(normalised)
    if ratios:
        metrics[f"{prefix}max_over_mean"] = sum(ratios) / len(ratios)
        metrics[f"{prefix}entropy"] = sum(entropies) / len(entropies)
    return metrics


@torch.no_grad()
def update_routing_bias(
    model: nn.Module,
    loads: Mapping[str, Tensor],
    *,
    rate: float,
    reduce: AllReduce | None = None,
) -> int:
    """Auxiliary-loss-free balancing: ``routing_bias += rate * sign(mean(load) - load)``.

    Args:
        model: holds the MoE blocks named in ``loads``.
        loads: module name -> [E] load of the step on this rank (or already summed over ranks,
            then ``reduce=None``).
        rate: the bias update speed (DeepSeek-V3: 0.001).
        reduce: sums the loads over the data-parallel ranks so every rank applies the same update.

    Returns:
        The number of blocks updated (those with a ``routing_bias`` buffer).
    """
    if rate < 0:
        raise ValueError(f"routing-bias update rate must be >= 0, got {rate}")
    summed = reduce_loads(loads, reduce)  # every rank calls reduce, even with no bias to update
    updated = 0
    for name, load in summed.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"update_routing_bias: no module {name!r} in the model") from e
        bias = getattr(module, "routing_bias", None)
        if bias is None:
            continue
        if bias.shape != load.shape:
            raise ValueError(
                f"{name}.routing_bias has shape {tuple(bias.shape)}, its load {tuple(load.shape)}"
            )
        direction = torch.sign(load.mean() - load)  # [E] in float64: exact ties give 0
        bias.add_(direction.to(device=bias.device, dtype=bias.dtype), alpha=rate)
        updated += 1
    return updated
