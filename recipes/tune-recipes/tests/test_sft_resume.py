"""Kill -9 or SIGTERM a real `tune run sft` and relaunch: the losses continue bit-identically."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tune.dist.testing import run_and_kill_at, run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, last_step_of, tiny_overrides, tune_command

STEPS = 8
TIMEOUT = 240


def _command(assets: TinyAssets, out: Path) -> list[str]:
    overrides = tiny_overrides(
        assets, out, f"training.max_steps={STEPS}", "checkpointing.save_every_n_steps=2",
        "eval.every_n_steps=null", "checkpointing.save_merged=false", "training.lora.dropout=0.1",
    )  # fmt: skip
    return tune_command("sft", "sft/tiny_cpu_lora", overrides)


@pytest.fixture(scope="module")
def reference(
    tiny_assets: TinyAssets, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, float]:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(_command(tiny_assets, out), TIMEOUT)
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.parametrize("kill_step", [3, 6])
def test_kill9_then_resume_auto_is_bit_identical(
    kill_step: int, tiny_assets: TinyAssets, reference: dict[int, float], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = _command(tiny_assets, out)
    seen = run_and_kill_at(command, last_step_of(out / "metrics.jsonl"), kill_step, TIMEOUT)
    assert seen >= kill_step
    run_to_end(command, TIMEOUT)  # the same command: resume=auto picks the last committed step
    losses = read_jsonl_metrics(out / "metrics.jsonl")  # steps after the resume point overwrite
    assert sorted(losses) == list(range(1, STEPS + 1))
    # dropout is on: equality needs the RNG state restored too, not just weights and data.
    assert losses == reference


def test_sigterm_saves_exits_zero_and_resumes(
    tiny_assets: TinyAssets, reference: dict[int, float], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = _command(tiny_assets, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + TIMEOUT
    while not read_jsonl_metrics(out / "metrics.jsonl").get(3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()[-3000:]
    stopped_at = max(read_jsonl_metrics(out / "metrics.jsonl"))
    assert stopped_at < STEPS
    assert (out / "checkpoints" / f"step_{stopped_at}" / "manifest.json").is_file()
    run_to_end(command, TIMEOUT)
    assert read_jsonl_metrics(out / "metrics.jsonl") == reference


def test_resume_path_without_checkpoint_is_an_error(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    command = tune_command(
        "sft", "sft/tiny_cpu_lora",
        tiny_overrides(tiny_assets, tmp_path / "out", "training.max_steps=6",
                       f"checkpointing.resume={empty}"),
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert str(empty) in result.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# A wrapper around the real CLI that SIGKILLs the process at a chosen point of the save of
# step 4: before the manifest is written, or just before the commit rename.
_KILL_IN_SAVE = """
import os, signal, sys
import tune.checkpoint.training_state as ts
point, step = sys.argv[1], int(sys.argv[2])
if point == "manifest":
    original = ts.write_manifest
    def patched(tmp, at_step, *args, **kwargs):
        if at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(tmp, at_step, *args, **kwargs)
    ts.write_manifest = patched
else:
    original = ts.CheckpointManager._commit
    def patched(self, tmp, final):
        if final.name == f"step_{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, tmp, final)
    ts.CheckpointManager._commit = patched
from tune.recipes.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("point", ["manifest", "rename"])
def test_kill_inside_a_save_resumes_from_the_previous_step(
    point: str, tiny_assets: TinyAssets, reference: dict[int, float], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = _command(tiny_assets, out)
    cli_args = command[command.index("run") :]
    killed = subprocess.run(
        [command[0], "-c", _KILL_IN_SAVE, point, "4", *cli_args],
        capture_output=True,
        timeout=TIMEOUT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert killed.returncode == -signal.SIGKILL
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "step_2" in steps
    assert "step_4" not in steps  # only the scratch directory of the interrupted save
    run_to_end(command, TIMEOUT)  # resumes from step 2, cleans the scratch directory
    assert read_jsonl_metrics(out / "metrics.jsonl") == reference
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")) == []
