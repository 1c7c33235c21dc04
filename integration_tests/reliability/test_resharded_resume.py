"""Save at 4 ranks, resume at 2 and at 3 (uneven FSDP shards): the run continues as if at 2.

Global batch 12 with micro-batch 1 divides 4, 3 and 2 ranks. Full fine-tuning without dropout:
per-rank RNG streams cannot carry over to another world size, the data order and weights must
(a repeated or skipped sample would change the loss of its step far beyond 1e-6).
About 3 minutes on 2 cores (4 ranks share them), so it runs in the soak (``-m slow``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tune.train.loggers import read_jsonl_metrics

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.slow]

STEPS, SAVE_AT = 6, 3
SETTINGS = (
    f"training.max_steps={STEPS}", f"checkpointing.save_every_n_steps={SAVE_AT}",
    "training.global_batch_size=12", "training.micro_batch_size=1", "training.lora.dropout=0.0",
)  # fmt: skip


@pytest.fixture(scope="module")
def two_rank_losses(runs: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Per-step losses of the uninterrupted 2-rank run."""
    out = tmp_path_factory.mktemp("reshard_reference") / "run"
    runs.launch_ok(runs.multi_rank(out, *SETTINGS), out.parent / "stderr.txt")
    return read_jsonl_metrics(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def four_rank_run(runs: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-rank run's output directory cut back to its committed step 3."""
    out = tmp_path_factory.mktemp("reshard_four") / "run"
    runs.launch_ok(runs.multi_rank(out, *SETTINGS, nproc=4), out.parent / "stderr.txt")
    shutil.rmtree(out / "checkpoints" / f"step_{STEPS}")
    return out


def test_four_ranks_match_two_ranks_before_the_save(
    four_rank_run: Path, two_rank_losses: dict[int, float], report: Any
) -> None:
    four = read_jsonl_metrics(four_rank_run / "metrics.jsonl")
    delta = max(abs(four[s] - two_rank_losses[s]) for s in range(1, SAVE_AT + 1))
    report("4 ranks vs 2 ranks, steps 1-3", trial=0, passed=delta <= 1e-6, max_abs_dloss=delta)
    assert delta <= 1e-6


@pytest.mark.parametrize("nproc", [2, 3])
def test_resume_at_another_world_size_continues_like_two_ranks(
    nproc: int, runs: Any, four_rank_run: Path, two_rank_losses: dict[int, float], report: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "run"
    shutil.copytree(four_rank_run, out)
    result = runs.launch(runs.multi_rank(out, *SETTINGS, nproc=nproc), tmp_path / "stderr.txt")
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    resumed = range(SAVE_AT + 1, STEPS + 1)
    delta = max((abs(losses[s] - two_rank_losses[s]) for s in resumed), default=float("inf"))
    report(f"save at 4 ranks, resume at {nproc}", trial=0, passed=result.returncode == 0
           and delta <= 1e-6, max_abs_dloss=delta, exit=result.returncode)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert delta <= 1e-6
