"""Reward functions chosen by name (``REWARDS``): bundled, the ``tune.rewards`` group, or an
allowed import, bound by tune-train's ``weighted_reward``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tune.recipes.config.registries import REWARDS
from tune.train.rl import WeightedReward, weighted_reward


def build_reward(
    name: str,
    *,
    weight: float = 1.0,
    options: Mapping[str, Any] | None = None,
    allow_imports: Sequence[str] = (),
) -> WeightedReward:
    """Load reward ``name`` with ``options`` bound; its metric name is the name's last part."""
    label = name.rpartition(":")[2].rpartition(".")[2]
    return weighted_reward(
        REWARDS.load(name, allow_imports), weight=weight, options=options, name=label
    )
