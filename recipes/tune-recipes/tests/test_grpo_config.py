"""The grpo config: the bundled tiny config loads, bad values are named by key, and reward
functions come from the bundled set, the `tune.rewards` group or an allowed import only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.recipes.common.reward_registry import build_reward, score_completions
from tune.recipes.config import ConfigValidationError, load_config
from tune.recipes.discovery import find_config
from tune.recipes.grpo.config import GRPOConfig
from tune.recipes.grpo.toy_task import arithmetic_rows
from tune.train.steps.rewards import (
    RewardInputs,
    answer_format,
    exact_answer,
    final_integer,
    length_penalty,
)


def _load(
    tmp_path: Path, *overrides: str, world_size: int = 1, allow_imports: tuple[str, ...] = ()
) -> GRPOConfig:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text("{}")
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1 + 1?", "answer": "2"}\n')
    path, _ = find_config("grpo/tiny_cpu", "grpo")
    return load_config(
        path, GRPOConfig,
        [f"model.checkpoint_dir={ckpt}", f"data.source={data}", *overrides],
        world_size=world_size, allow_imports=allow_imports,
    )  # fmt: skip


def test_bundled_tiny_config_loads(tmp_path: Path) -> None:
    cfg = _load(tmp_path)
    assert cfg.recipe == "grpo"
    assert cfg.training.method == "full"
    assert [r.name for r in cfg.rewards] == ["exact_answer", "answer_format"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.group_size=1", "rollout.group_size"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("rollout.top_p=1.5", "rollout.top_p"),
        ("training.clip_eps=0", "training.clip_eps"),
        ("rewards=[{name: exact_anwser}]", "rewards.0.name"),
        ("rewards=[{name: mypkg.rewards.mine}]", "rewards.0.name"),
        ("rewards=[]", "rewards"),
        ("rollout.backend=vllm", "rollout.backend"),
        ("training.lr_schedule.warmup_steps=500", "training.lr_schedule.warmup_steps"),
        ("distributed.tp_size=2", "distributed.tp_size"),
    ],
)
def test_bad_values_are_named_by_key(tmp_path: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigValidationError) as err:
        _load(tmp_path, override)
    assert key in str(err.value)


def test_prompts_must_split_evenly_over_ranks(tmp_path: Path) -> None:
    with pytest.raises(ConfigValidationError, match=r"rollout\.prompts_per_step"):
        _load(tmp_path, "rollout.prompts_per_step=15", world_size=2)
    assert _load(tmp_path, "rollout.prompts_per_step=16", world_size=2)


def test_user_reward_by_allowed_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def ends_with_seven(inputs, bonus=1.0):\n"
        "    return [bonus if c.endswith('7') else 0.0 for c in inputs.completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _load(
        tmp_path, "rewards=[{name: my_rewards.ends_with_seven, options: {bonus: 2.0}}]",
        allow_imports=("my_rewards.*",),
    )  # fmt: skip
    spec = cfg.rewards[0]
    reward = build_reward(
        spec.name, weight=0.5, options=spec.options, allow_imports=cfg.allow_imports
    )
    inputs = RewardInputs(["p", "p"], ["Answer: 7", "Answer: 8"], ["7", "7"], [3, 3])
    total, each = score_completions([reward], inputs)
    assert each["ends_with_seven"].tolist() == [2.0, 0.0]
    assert total.tolist() == [1.0, 0.0]
    with pytest.raises(PermissionError, match="--allow-import"):
        build_reward("my_rewards.ends_with_seven")


def test_bundled_rewards() -> None:
    inputs = RewardInputs(
        prompts=[""] * 5,
        completions=["Answer: 12", "Answer: 12 apples", "I think -3", "12", "no number"],
        answers=["12", "12", "-3", "13", "1"],
        completion_tokens=[3, 5, 4, 1, 10],
    )
    assert exact_answer(inputs) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert answer_format(inputs) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert answer_format(inputs, pattern=r"-?\d+") == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert length_penalty(inputs, free_tokens=3, per_token=0.5) == [0.0, -1.0, -0.5, 0.0, -3.5]
    assert final_integer("from 3 to -14.") == -14
    assert final_integer("none") is None


def test_a_reward_returning_nan_is_named() -> None:
    reward = build_reward("length_penalty", options={"per_token": float("nan")})
    with pytest.raises(ValueError, match=r"length_penalty.*finite"):
        score_completions([reward], RewardInputs(["p"], ["c"], ["1"], [4]))


def test_toy_task_answers_are_verifiable() -> None:
    rows = arithmetic_rows(300, seed=3)
    assert rows == arithmetic_rows(300, seed=3)
    for row in rows:
        numbers = [int(w) for w in str(row["prompt"]).replace(".", " ").split() if w.isdigit()]
        a, b = numbers
        assert int(str(row["answer"])) in (a + b, a - b)
        assert 0 <= int(str(row["answer"])) <= 9
        assert row["messages"][1]["content"] == f"Answer: {row['answer']}"  # type: ignore[index]
