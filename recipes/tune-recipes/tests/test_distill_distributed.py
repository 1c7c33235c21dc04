"""Two gloo ranks (FSDP2, teacher sharded too) give the same losses as one process."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tune.data.synthetic import synthetic_instruction_rows
from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, make_tiny_checkpoint

STEPS = 3
TIMEOUT = 300


@pytest.mark.slow  # ~20-40 s each; run with `nox -s "tests(package='recipes')" -- -m slow`
@pytest.mark.distributed
def test_two_ranks_match_one_process(tiny_assets: TinyAssets, tmp_path: Path) -> None:
    rows = synthetic_instruction_rows(240, seed=0)  # make_tiny_assets' tokenizer text
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    student = make_tiny_checkpoint(
        tmp_path / "student", seed=1, hidden_size=64, tokenizer_text=text, tie_word_embeddings=True
    )
    metrics = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        launch = ["--nproc-per-node", "2", "--standalone"] if nproc == 2 else []
        command = [sys.executable, "-m", "tune.recipes", "run", "distill", *launch, "--config",
                   "distill/tiny_cpu_full_2proc", f"model.checkpoint_dir={student}",
                   f"teacher.checkpoint_dir={tiny_assets.checkpoint_dir}",
                   f"tokenizer.path={tiny_assets.checkpoint_dir}",
                   f"data.source={tiny_assets.data_file}", f"checkpointing.output_dir={out}",
                   f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
                   "checkpointing.save_every_n_steps=null", "eval.every_n_steps=3",
                   "logging.loggers=[jsonl]", "logging.progress_bar=false"]  # fmt: skip
        result = run_to_end(command, TIMEOUT)
        metrics[nproc] = {
            k: read_jsonl_metrics(out / "metrics.jsonl", k) for k in ("loss", "kl", "val_kl")
        }
        if nproc == 2:
            # Each rank holds about half of the teacher's parameters.
            found = re.search(r"frozen model: [^;]*; (\d+) of (\d+) parameters", result.stderr)
            assert found, result.stderr[-2000:]
            local, total = int(found.group(1)), int(found.group(2))
            assert local < 0.6 * total
    assert sorted(metrics[1]["loss"]) == list(range(1, STEPS + 1))
    for key in ("loss", "kl", "val_kl"):
        for step, value in metrics[1][key].items():
            assert metrics[2][key][step] == pytest.approx(value, abs=1e-5), (key, step)
