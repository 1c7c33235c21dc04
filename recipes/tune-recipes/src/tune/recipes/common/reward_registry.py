"""Reward functions chosen by name: bundled ones, the ``tune.rewards`` group, allowed imports.

A package adds a reward function with::

    [project.entry-points."tune.rewards"]
    my_reward = "mypkg.rewards:my_reward"

where ``my_reward(inputs: RewardInputs, **options) -> Sequence[float]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tune.recipes.config.registries import Registry
from tune.train.steps.rewards import RewardInputs

RewardFunction = Callable[[RewardInputs], Sequence[float]]

REWARDS = Registry(
    "tune.rewards",
    "reward function",
    {
        "exact_answer": "tune.train.steps.rewards:exact_answer",
        "answer_format": "tune.train.steps.rewards:answer_format",
        "length_penalty": "tune.train.steps.rewards:length_penalty",
    },
)


@dataclass(frozen=True)
class WeightedReward:
    """One reward function of a run, its weight in the total and its metric name.

    Args:
        name: the name in metrics (``reward/<name>/mean``).
        function: ``RewardInputs -> N floats`` with the config's options bound.
        weight: factor in the total reward.
    """

    name: str
    function: RewardFunction
    weight: float


def build_reward(
    name: str,
    *,
    weight: float = 1.0,
    options: Mapping[str, Any] | None = None,
    allow_imports: Sequence[str] = (),
) -> WeightedReward:
    """Load reward ``name`` (bundled, entry point or allowed dotted import) with ``options`` bound."""
    function = REWARDS.load(name, allow_imports)
    if not callable(function):
        raise TypeError(f"reward {name!r} resolved to {function!r}, which is not callable")
    bound = functools.partial(function, **dict(options or {})) if options else function
    label = name.rpartition(":")[2].rpartition(".")[2]
    return WeightedReward(label, bound, float(weight))


def score_completions(
    rewards: Sequence[WeightedReward], inputs: RewardInputs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total reward [N] and each function's raw rewards [N] (float32).

    Raises:
        ValueError: a function returned the wrong number of values or a non-finite one,
            naming the function and the completion.
    """
    n = len(inputs.completions)
    total = torch.zeros(n, dtype=torch.float32)
    each: dict[str, torch.Tensor] = {}
    for reward in rewards:
        values = [float(v) for v in reward.function(inputs)]
        if len(values) != n:
            raise ValueError(
                f"reward {reward.name!r} returned {len(values)} values for {n} completions"
            )
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"reward {reward.name!r} returned {values[bad[0]]} for completion {bad[0]} "
                f"({inputs.completions[bad[0]]!r}); rewards must be finite"
            )
        tensor = torch.tensor(values, dtype=torch.float32)
        key = reward.name if reward.name not in each else f"{reward.name}_{len(each)}"
        each[key] = tensor
        total += reward.weight * tensor
    return total, each
