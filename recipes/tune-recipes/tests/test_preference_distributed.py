"""Two gloo ranks (FSDP2) give the same per-step DPO losses and held-out metrics as one process:
LoRA (reference = adapters disabled on the sharded policy) and full (a frozen sharded copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.data.synthetic import write_preference_data
from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, tiny_overrides, tune_command

STEPS = 3
TIMEOUT = 300


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_ranks_match_one_process(method: str, tied_assets: TinyAssets, tmp_path: Path) -> None:
    data = write_preference_data(tmp_path / "data", num_rows=80)["paired"]
    metrics: dict[int, dict[str, dict[int, float]]] = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        overrides = tiny_overrides(
            TinyAssets(tied_assets.checkpoint_dir, data), out, f"training.method={method}",
            f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
            "training.optimizer.lr=1e-3", "checkpointing.save_every_n_steps=null",
            "eval.every_n_steps=null", "eval.max_batches=null", "eval.before_training=false",
        )  # fmt: skip
        run_to_end(
            tune_command("preference", "preference/tiny_cpu_dpo_lora", overrides, nproc), TIMEOUT
        )
        metrics[nproc] = {
            key: read_jsonl_metrics(out / "metrics.jsonl", key)
            for key in ("loss", "reward_margin", "accuracy", "val_loss", "val_accuracy")
        }
    assert sorted(metrics[1]["loss"]) == list(range(1, STEPS + 1))
    for key, values in metrics[1].items():
        assert sorted(metrics[2][key]) == sorted(values), key
        for step, value in values.items():
            assert metrics[2][key][step] == pytest.approx(value, abs=2e-5), (key, step)
    assert metrics[1]["loss"][STEPS] < metrics[1]["loss"][1]
