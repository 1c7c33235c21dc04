"""The reliability guarantees hold for every training recipe, not only sft (2 gloo ranks).

For preference, distill and grpo: SIGTERM to one rank stops every rank within a step with a
saved step and exit 0; the relaunch is then killed with -9 mid-run; the next relaunch finishes.
Every logged loss equals the uninterrupted run's, and the final weights are bit-identical.
(sft has the same checks, and more, in test_crash_resume.py; the secret canaries of every
recipe are in integration_tests/adversarial/test_secrets.py.)
"""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tune.data.synthetic import write_preference_data
from tune.dist.testing import run_and_kill_at, run_and_signal_rank, run_launch
from tune_testing import (
    TinyAssets,
    last_step_of,
    make_arithmetic_assets,
    tiny_overrides,
    tune_command,
)

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

STEPS = 6
SAVE_EVERY = 2
TIMEOUT = 240.0
COMMON = (
    f"training.max_steps={STEPS}",
    f"checkpointing.save_every_n_steps={SAVE_EVERY}",
    "checkpointing.save_merged=false",
    "training.lr_schedule.warmup_steps=1",
)
NO_EVAL = ("eval.every_n_steps=null", "eval.before_training=false", "data.validation_fraction=0")


@pytest.fixture(scope="module")
def inputs(assets: TinyAssets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("every_recipe")
    return {
        "paired": write_preference_data(root, num_rows=96)["paired"],
        "arithmetic": make_arithmetic_assets(root / "arith", num_rows=96, held_out_rows=8),
    }


def _command(recipe: str, out: Path, assets: TinyAssets, inputs: dict[str, Any]) -> list[str]:
    base = assets.checkpoint_dir
    if recipe == "preference":
        config = "preference/tiny_cpu_dpo_lora"
        overrides = [*tiny_overrides(TinyAssets(base, inputs["paired"]), out), *NO_EVAL]
    elif recipe == "distill":
        config = "distill/tiny_cpu_lora"
        overrides = [*tiny_overrides(assets, out), f"teacher.checkpoint_dir={base}", *NO_EVAL]
    else:
        arithmetic = replace(inputs["arithmetic"], checkpoint_dir=base)
        config, overrides = "grpo/tiny_cpu", tiny_overrides(arithmetic, out)
    return tune_command(recipe, config, [*overrides, *COMMON], nproc=2)


def _losses(out: Path) -> list[tuple[int, float]]:
    """Every (step, loss) line, in order: a step logged twice would show up."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


@pytest.mark.parametrize("recipe", ["preference", "distill", "grpo"])
def test_sigterm_one_rank_then_kill9_then_resume_is_bit_identical(
    recipe: str, assets: TinyAssets, inputs: dict[str, Any], tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    done = run_launch(_command(recipe, reference, assets, inputs), TIMEOUT, tmp_path / "ref.txt")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _losses(reference)
    assert [s for s, _ in expected] == list(range(1, STEPS + 1))

    out = tmp_path / "run"
    command, progress = _command(recipe, out, assets, inputs), last_step_of(out / "metrics.jsonl")
    stopped = run_and_signal_rank(
        command, progress, 2, ranks=[1], sig=signal.SIGTERM, timeout=TIMEOUT,
        log=tmp_path / "stopped.txt", grace=60.0,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    saved = progress()
    assert (out / "checkpoints" / f"step_{saved}" / "manifest.json").is_file()
    assert saved < STEPS

    run_and_kill_at(command, progress, saved + 2, TIMEOUT)  # kill -9, every process
    finished = run_launch(command, TIMEOUT, tmp_path / "final.txt")
    assert finished.returncode == 0, finished.stderr[-3000:]

    assert _losses(out) == expected  # each step once, each loss bit-identical
    weights = "model/model.safetensors" if recipe == "grpo" else "adapter/adapter_model.safetensors"
    for name in (weights,):  # grpo/tiny_cpu trains fully; the others train LoRA adapters
        ours, theirs = load_file(out / name), load_file(reference / name)
        assert sorted(ours) == sorted(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []
