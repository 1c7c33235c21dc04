"""Two gloo ranks (FSDP2) give the same per-step losses as one process for the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.recipes.sft_testing import (
    TinyAssets,
    read_metrics,
    run_to_end,
    sft_overrides,
    tune_command,
)

STEPS = 4
TIMEOUT = 300


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_ranks_match_one_process(method: str, tiny_assets: TinyAssets, tmp_path: Path) -> None:
    losses = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        overrides = sft_overrides(
            tiny_assets, out, f"training.method={method}", f"training.max_steps={STEPS}",
            "training.lr_schedule.warmup_steps=1",
            "checkpointing.save_every_n_steps=null", "eval.every_n_steps=2",
            "checkpointing.save_merged=false",
        )  # fmt: skip
        run_to_end(tune_command("sft/tiny_cpu_lora_2proc", overrides, nproc=nproc), TIMEOUT)
        losses[nproc] = read_metrics(out / "metrics.jsonl")
        losses[f"val{nproc}"] = read_metrics(out / "metrics.jsonl", "val_loss")
    assert sorted(losses[1]) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert losses[2][step] == pytest.approx(losses[1][step], abs=1e-5), step
    assert losses["val2"] == pytest.approx(losses["val1"], abs=1e-5)
    # the model really trains: the loss of the last step is below the first
    assert losses[1][STEPS] < losses[1][1]
