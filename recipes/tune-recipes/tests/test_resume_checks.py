"""check_resume_compatible: the shared keys and a recipe's own keys, each named when changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.recipes.common.train_state import ResumeMismatchError, check_resume_compatible
from tune.recipes.grpo.loop import GRPO_RESUME_KEYS

SAVED = {"data": {"source": "a.jsonl"}, "rollout": {"group_size": 4, "prompts_per_step": 8}}


def test_a_recipe_key_is_checked_only_when_the_recipe_names_it() -> None:
    now = {**SAVED, "rollout": {"group_size": 8, "prompts_per_step": 8}}
    check_resume_compatible(SAVED, now, Path("step_2"))  # not a key every recipe shares
    with pytest.raises(ResumeMismatchError, match=r"step_2 .*rollout\.group_size: saved 4, now 8"):
        check_resume_compatible(SAVED, now, Path("step_2"), GRPO_RESUME_KEYS)


def test_shared_keys_are_always_checked() -> None:
    now = {**SAVED, "data": {"source": "b.jsonl"}}
    with pytest.raises(ResumeMismatchError, match=r"data\.source: saved 'a.jsonl', now 'b.jsonl'"):
        check_resume_compatible(SAVED, now, Path("step_2"), GRPO_RESUME_KEYS)
