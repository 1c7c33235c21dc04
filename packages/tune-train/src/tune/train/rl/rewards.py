"""Reward functions for RL from verifiable rewards: their inputs, the bundled ones, and scoring.

A reward function takes a ``RewardInputs`` and returns one float per completion. Functions with
options (``answer_format(inputs, *, pattern=...)``) have them bound by ``weighted_reward``; that is
also the contract of a function registered by name (e.g. tune-recipes' ``tune.rewards``
entry-point group): ``fn(inputs: RewardInputs, **options) -> Sequence[float]``.

    rewards = [weighted_reward(exact_answer), weighted_reward(answer_format, weight=0.1)]
    total, each = score_completions(rewards, inputs)  # [N] weighted sum, {name: [N]}
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

_INTEGER = re.compile(r"-?\d+")
DEFAULT_ANSWER_PATTERN = r"\s*Answer: -?\d+\s*"


@dataclass(frozen=True)
class RewardInputs:
    """What a reward function sees about N completions (prompts repeated once per completion).

    Args:
        prompts: N prompt texts as rendered for the model.
        completions: N completion texts (special tokens removed).
        answers: N reference answers (e.g. a dataset's ``answer`` column).
        completion_tokens: N completion lengths in tokens.
    """

    prompts: Sequence[str]
    completions: Sequence[str]
    answers: Sequence[str]
    completion_tokens: Sequence[int]

    def __post_init__(self) -> None:
        sizes = {len(self.prompts), len(self.completions), len(self.answers)}
        sizes.add(len(self.completion_tokens))
        if len(sizes) != 1:
            raise ValueError(
                "RewardInputs fields must have one length each, got prompts "
                f"{len(self.prompts)}, completions {len(self.completions)}, answers "
                f"{len(self.answers)}, completion_tokens {len(self.completion_tokens)}"
            )


class RewardFunction(Protocol):
    """A reward with its options bound: ``RewardInputs`` of N completions -> N floats."""

    def __call__(self, inputs: RewardInputs, /) -> Sequence[float]: ...


def final_integer(text: str) -> int | None:
    """The last integer written in ``text`` (None when there is none)."""
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


def exact_answer(inputs: RewardInputs) -> list[float]:
    """1.0 where the completion's last integer equals the integer reference answer, else 0.0."""
    rewards = []
    for completion, answer in zip(inputs.completions, inputs.answers, strict=True):
        expected = final_integer(answer)
        got = final_integer(completion)
        rewards.append(1.0 if expected is not None and got == expected else 0.0)
    return rewards


def answer_format(inputs: RewardInputs, *, pattern: str = DEFAULT_ANSWER_PATTERN) -> list[float]:
    """1.0 where the whole completion matches the regular expression ``pattern``, else 0.0.

    Args:
        inputs: the completions.
        pattern: a Python regular expression matched against the full completion text.
    """
    compiled = re.compile(pattern, re.DOTALL)
    return [1.0 if compiled.fullmatch(c) else 0.0 for c in inputs.completions]


def length_penalty(
    inputs: RewardInputs, *, free_tokens: int = 0, per_token: float = 0.01
) -> list[float]:
    """``-per_token`` for every completion token beyond ``free_tokens`` (0 up to there).

    Args:
        inputs: the completions.
        free_tokens: tokens allowed without penalty.
        per_token: penalty per extra token.
    """
    return [-per_token * max(0, n - free_tokens) for n in inputs.completion_tokens]


@dataclass(frozen=True)
class WeightedReward:
    """One reward function of a run, its weight in the total and its metric name.

    Args:
        name: the name in metrics (``reward/<name>/mean``).
        function: ``RewardInputs -> N floats`` with its options bound.
        weight: factor in the total reward.
    """

    name: str
    function: RewardFunction
    weight: float


def weighted_reward(
    function: Callable[..., Sequence[float]],
    *,
    weight: float = 1.0,
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> WeightedReward:
    """``function`` with keyword ``options`` bound, its ``weight`` and its metric ``name``.

    Args:
        function: ``fn(inputs: RewardInputs, **options) -> Sequence[float]``.
        weight: factor in the total reward (finite).
        options: keyword arguments bound to ``function`` (None: none).
        name: metric name (None: the function's ``__name__``).
    """
    label = name or getattr(function, "__name__", None) or type(function).__name__
    if not callable(function):
        raise TypeError(f"reward {label!r} is {function!r}, which is not callable")
    if not math.isfinite(weight):
        raise ValueError(f"reward {label!r}: weight must be finite, got {weight}")
    bound = functools.partial(function, **options) if options else function
    return WeightedReward(label, bound, float(weight))


def score_completions(
    rewards: Sequence[WeightedReward], inputs: RewardInputs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total reward [N] and each function's raw rewards [N] (float32).

    A name used twice gets a suffix (``name_<index>``) in the per-function dict.

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
