"""Bundled reward functions for RL recipes, and the inputs every reward function receives.

A reward function takes a ``RewardInputs`` (plus keyword options from the config) and returns one
float per completion. Users register their own in the ``tune.rewards`` entry-point group or name
them by an allow-listed dotted import (see ``reward_registry``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_INTEGER = re.compile(r"-?\d+")
DEFAULT_ANSWER_PATTERN = r"\s*Answer: -?\d+\s*"


@dataclass(frozen=True)
class RewardInputs:
    """What a reward function sees about N completions (prompts repeated once per completion).

    Args:
        prompts: N prompt texts as rendered for the model.
        completions: N completion texts (special tokens removed).
        answers: N reference answers (from the dataset's ``answer`` column).
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
