"""check_resume_compatible: invariant keys never change; any other change must be listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.recipes.common.train_state import (
    ResumeMismatchError,
    changed_settings,
    check_resume_compatible,
)
from tune.recipes.grpo.loop import GRPO_RESUME_KEYS

SAVED = {
    "data": {"source": "a.jsonl"},
    "rollout": {"group_size": 4, "prompts_per_step": 8},
    "training": {"optimizer": {"lr": 1e-4}, "max_steps": 10},
    "logging": {"loggers": ["jsonl"]},
    "checkpointing": {"resume_overrides": []},
}


def _now(**sections: dict) -> dict:
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in SAVED.items()}
    for name, values in sections.items():
        tree[name] = {**tree[name], **values}
    return tree


def test_a_recipe_key_never_changes_even_when_listed() -> None:
    now = _now(rollout={"group_size": 8}, checkpointing={"resume_overrides": ["rollout"]})
    check_resume_compatible(SAVED, now, Path("step_2"))  # listed, not a key of this recipe
    with pytest.raises(ResumeMismatchError, match=r"step_2 .*rollout\.group_size: saved 4, now 8"):
        check_resume_compatible(SAVED, now, Path("step_2"), GRPO_RESUME_KEYS)


def test_shared_keys_are_always_checked() -> None:
    now = _now(data={"source": "b.jsonl"})
    with pytest.raises(ResumeMismatchError, match=r"data\.source: saved 'a.jsonl', now 'b.jsonl'"):
        check_resume_compatible(SAVED, now, Path("step_2"), GRPO_RESUME_KEYS)


def test_any_other_change_is_refused_naming_it_unless_listed() -> None:
    now = _now(training={"optimizer": {"lr": 3e-4}, "max_steps": 20})
    with pytest.raises(ResumeMismatchError) as err:
        check_resume_compatible(SAVED, now, Path("step_2"))
    message = str(err.value)
    assert "training.max_steps: saved 10, now 20" in message
    assert "training.optimizer.lr: saved 0.0001, now 0.0003" in message
    assert "resume_overrides=[training.max_steps,training.optimizer.lr]" in message
    listed = _now(
        training={"optimizer": {"lr": 3e-4}, "max_steps": 20},
        checkpointing={"resume_overrides": ["training.optimizer.lr", "training.max_steps"]},
    )
    applied = check_resume_compatible(SAVED, listed, Path("step_2"))
    assert applied == {"training.max_steps": (10, 20), "training.optimizer.lr": (1e-4, 3e-4)}
    # A listed section covers the keys under it.
    section = _now(training={"max_steps": 20}, checkpointing={"resume_overrides": ["training"]})
    assert check_resume_compatible(SAVED, section, Path("step_2")) == {
        "training.max_steps": (10, 20)
    }


def test_free_keys_and_keys_new_to_the_schema_pass_silently() -> None:
    now = _now(logging={"loggers": ["stdout"]}, checkpointing={"keep_last_n": 5})
    now["training"] = {**now["training"], "brand_new_key": 1}
    assert changed_settings(SAVED, now) == {}
    assert check_resume_compatible(SAVED, now, Path("step_2")) == {}
