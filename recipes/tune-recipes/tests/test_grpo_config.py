"""The grpo config: the bundled tiny config loads, bad values are named by key, and reward
functions come from the bundled set, the `tune.rewards` group or an allowed import only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.config import ConfigValidationError
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.grpo.backend import build_generation_backend
from tune.recipes.grpo.config import GRPOConfig
from tune.recipes.grpo.rewards import build_reward
from tune.train.rl import PolicyGenerationBackend, RewardInputs, exact_answer, score_completions


def _load(
    tmp_path: Path, *overrides: str, world_size: int = 1, allow_imports: tuple[str, ...] = ()
) -> GRPOConfig:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")  # validation checks names, not contents
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


def test_bundled_reward_names_are_tune_trains_functions() -> None:
    assert build_reward("exact_answer").function is exact_answer
    reward = build_reward("length_penalty", weight=2.0, options={"per_token": 0.5})
    assert (reward.name, reward.weight) == ("length_penalty", 2.0)
    assert reward.function(RewardInputs(["p"], ["c"], ["1"], [3])) == [-1.5]


def test_generation_backends_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(2, 2)
    backend = build_generation_backend(
        "builtin", model, pad_id=3, distributed=True, options={"batch_size": 4}
    )
    assert isinstance(backend, PolicyGenerationBackend)
    assert (backend.model, backend.pad_id, backend.lockstep, backend.batch_size) == (
        model, 3, True, 4,
    )  # fmt: skip
    (tmp_path / "my_backends.py").write_text("def broken(model, **kwargs):\n    return object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match=r"rollout.backend 'my_backends.broken' built object"):
        build_generation_backend(
            "my_backends.broken", model, pad_id=0, distributed=False,
            allow_imports=["my_backends.*"],
        )  # fmt: skip
