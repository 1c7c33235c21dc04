"""Kill -9 a real `tune run grpo` and relaunch: rewards and losses continue identically.

LoRA with dropout and a KL term to the adapter-disabled reference: equality needs the weights,
optimizer, scheduler, data position and RNG (dropout) restored, and the sampling seeds of every
later step to be the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.dist.testing import run_and_kill_at, run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    TinyAssets,
    last_step_of,
    make_arithmetic_assets,
    tiny_overrides,
    tune_command,
)

STEPS = 5
TIMEOUT = 240
KEYS = ("loss", "reward/mean", "reward/exact_answer/mean", "completion_length", "kl")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return make_arithmetic_assets(tmp_path_factory.mktemp("grpo_assets"), num_rows=200)


def _command(assets: TinyAssets, out: Path) -> list[str]:
    overrides = tiny_overrides(
        assets, out, f"training.max_steps={STEPS}",
        "checkpointing.save_every_n_steps=2", "eval.every_n_steps=null", "eval.max_prompts=8",
        "training.method=lora", "training.lora.dropout=0.1", "training.kl_coef=0.05",
        "training.updates_per_rollout=2", "training.micro_batch_size=16",
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "training.optimizer.lr=1e-3",
        # a random model is never exactly right: reward writing any digit, so groups differ
        "rewards=[{name: exact_answer}, {name: answer_format, options: {pattern: '.*[0-9].*'}}]",
    )  # fmt: skip
    return tune_command("grpo", "grpo/tiny_cpu", overrides)


def _metrics(out: Path) -> dict[str, dict[int, float]]:
    return {key: read_jsonl_metrics(out / "metrics.jsonl", key) for key in KEYS}


def test_kill9_then_resume_reproduces_rewards_and_losses(
    assets: TinyAssets, tmp_path: Path
) -> None:
    reference_out = tmp_path / "uninterrupted"
    run_to_end(_command(assets, reference_out), TIMEOUT)
    reference = _metrics(reference_out)
    assert sorted(reference["loss"]) == list(range(1, STEPS + 1))
    assert len(set(reference["reward/mean"].values())) > 1  # sampling differs step to step
    assert reference["kl"][STEPS] > 0  # the LoRA policy moved off the base (the reference)

    out = tmp_path / "run"
    command = _command(assets, out)
    seen = run_and_kill_at(command, last_step_of(out / "metrics.jsonl"), 3, TIMEOUT)
    assert 3 <= seen < STEPS
    run_to_end(command, TIMEOUT)  # resume=auto: from step 2 (the last committed one)
    resumed = _metrics(out)
    for key in KEYS:
        assert resumed[key] == reference[key], key
