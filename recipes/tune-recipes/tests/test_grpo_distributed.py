"""Two gloo ranks (FSDP2): each rank samples for its own prompts, in lockstep, and the run trains,
evaluates on the shared held-out set and writes its outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, make_arithmetic_assets, tiny_overrides

STEPS = 3
TIMEOUT = 300


@pytest.mark.slow  # ~20-40 s each; run with `nox -s "tests(package='recipes')" -- -m slow`
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_ranks_train_and_write_outputs(method: str, tmp_path: Path) -> None:
    assets: TinyAssets = make_arithmetic_assets(
        tmp_path / "assets", num_rows=100, tie_word_embeddings=True
    )
    out = tmp_path / "run"
    overrides = tiny_overrides(
        assets, out, f"training.method={method}",
        f"training.max_steps={STEPS}", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "rollout.max_new_tokens=5", "eval.max_prompts=10", "training.kl_coef=0.05",
        "training.updates_per_rollout=2", "checkpointing.save_every_n_steps=null", "checkpointing.save_adapter=true",
        "rewards=[{name: answer_format, options: {pattern: '.*[0-9].*'}}]",
    )  # fmt: skip
    command = [
        "python", "-m", "tune.recipes", "run", "grpo", "--nproc-per-node", "2",
        "--config", "grpo/tiny_cpu", *overrides,
    ]  # fmt: skip
    run_to_end(command, TIMEOUT)
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    lengths = read_jsonl_metrics(out / "metrics.jsonl", "completion_length")
    assert all(0 < v <= 5 for v in lengths.values())
    accuracy = read_jsonl_metrics(out / "metrics.jsonl", "eval/accuracy")
    assert sorted(accuracy) == [0, STEPS]  # 10 held-out prompts: 5 per rank, reduced
    written = out / ("model" if method == "full" else "adapter")
    assert written.is_dir()
    if method == "lora":
        assert json.loads((written / "adapter_config.json").read_text())["peft_type"] == "LORA"
