"""kill -9 of one rank at a random step, kill inside a save, SIGTERM preemption: 2 gloo ranks.

Every relaunch is the same command line (``checkpointing.resume=auto``), run from the test under
a hard timeout; torchrun's own restarts are not used. Per-step losses and the final weights must
equal those of an uninterrupted run bit for bit. The runs fine-tune fully (FSDP2-sharded weights
and optimizer state in DCP); `test_lora_two_rank_run_resumes` covers an adapter run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tune.dist.testing import run_and_signal_rank
from tune.train.loggers import read_jsonl_metrics
from tune_testing import last_step_of

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

CHAINED_TRIALS = 5  # CI: five kills at distinct steps, each relaunch resuming the previous one
SOAK_TRIALS = 20  # the soak: independent trials (killed launch + relaunch, ~45 s each)


def _max_abs_delta(losses: dict[int, float], expected: dict[int, float]) -> float:
    return max(abs(losses[s] - expected[s]) for s in expected)


def _assert_same_run(out: Path, reference: dict[str, Any]) -> float:
    """Losses and final weights bit-identical to the reference; no scratch left. Returns max |Δ|."""
    losses = read_jsonl_metrics(out / "metrics.jsonl")  # a re-run step's later line wins
    expected = reference["losses"]
    assert sorted(losses) == sorted(expected)
    delta = _max_abs_delta(losses, expected)
    assert losses == expected, f"max |Δloss| = {delta}"
    ours = load_file(out / "model" / "model.safetensors")
    theirs = load_file(reference["out"] / "model" / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [], "an interrupted save left scratch directories behind"
    return delta


def _every_logged_loss_matches(out: Path, expected: dict[int, float]) -> float:
    """Each loss line (a step re-run after a resume logs it again) equals the reference."""
    delta = 0.0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill is not a loss
            continue
        if "loss" in record:
            delta = max(delta, abs(record["loss"] - expected[record["step"]]))
            assert record["loss"] == expected[record["step"]], record
    return delta


# Slow (~100 s): one kill and resume per recipe (test_every_recipe.py) and sft's kill -9 at two
# steps (tune-recipes' test_sft_resume.py) run in the default suite; this five-kill soak does not.
@pytest.mark.slow
def test_five_kills_at_distinct_steps_each_resumed_bit_identically(
    runs: Any, reference: dict[str, Any], report: Any, tmp_path: Path
) -> None:
    """One run killed (kill -9, random rank) five times at five distinct steps, relaunched each
    time with the same command: every trial resumes a run that was itself resumed."""
    rng = random.Random(1129)
    kill_steps = sorted(rng.sample(range(1, runs.steps), CHAINED_TRIALS))
    out = tmp_path / "run"
    command = runs.multi_rank(out)
    for trial, step in enumerate(kill_steps):
        rank = rng.randint(0, 1)
        killed = run_and_signal_rank(
            command, last_step_of(out / "metrics.jsonl"), step, ranks=[rank],
            sig=signal.SIGKILL, timeout=runs.timeout, log=tmp_path / f"killed{trial}.txt",
        )  # fmt: skip
        assert killed.returncode != 0, "the launch survived the death of a rank"
        assert killed.signalled_at < runs.steps, "the run ended before the kill"
        delta = _every_logged_loss_matches(out, reference["losses"])
        report("kill -9 one rank at a distinct step, relaunch (chained, CI)", trial=trial,
               kill_step=killed.signalled_at, rank=rank, passed=True, max_abs_dloss=delta)  # fmt: skip
    runs.launch_ok(command, tmp_path / "resumed.txt")
    _every_logged_loss_matches(out, reference["losses"])
    _assert_same_run(out, reference)


TRIALS = [pytest.param(i, id=f"trial{i}", marks=pytest.mark.slow) for i in range(SOAK_TRIALS)]


@pytest.mark.parametrize("trial", TRIALS)
def test_kill9_random_rank_at_random_step_resumes_bit_identically(
    trial: int, runs: Any, reference: dict[str, Any], report: Any, tmp_path: Path
) -> None:
    rng = random.Random(1129 + trial)
    kill_step, rank = rng.randint(1, runs.steps - 1), rng.randint(0, 1)
    out = tmp_path / "run"
    command = runs.multi_rank(out)
    killed = run_and_signal_rank(
        command, last_step_of(out / "metrics.jsonl"), kill_step, ranks=[rank],
        sig=signal.SIGKILL, timeout=runs.timeout, log=tmp_path / "killed.txt",
    )  # fmt: skip
    assert killed.returncode != 0, "the launch survived the death of a rank"
    assert killed.signalled_at < runs.steps, "the run ended before the kill"
    runs.launch_ok(command, tmp_path / "resumed.txt")
    delta = _assert_same_run(out, reference)
    report("kill -9 one rank at a random step, relaunch", trial=trial, kill_step=killed.signalled_at,
           rank=rank, passed=True, max_abs_dloss=delta)  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "rank"),
    [
        pytest.param("kill_before_rename", 0, id="rank0-before-commit-rename"),
        # ~45 s each: in the soak only
        pytest.param("kill_in_dcp_write", 1, id="rank1-inside-DCP-write", marks=pytest.mark.slow),
        pytest.param("kill_before_manifest", 0, id="rank0-before-manifest", marks=pytest.mark.slow),
    ],
)
def test_kill_inside_a_save_loses_nothing(
    fault: str, rank: int, runs: Any, inject: Any, reference: dict[str, Any], report: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "run"
    command = runs.multi_rank(out)
    save_step = 2 * runs.save_every  # the second save: one committed step exists before it
    killed = runs.launch(command, tmp_path / "killed.txt", inject(f"{fault}:{save_step}:{rank}"))
    assert killed.returncode != 0
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert f"step_{runs.save_every}" in names
    assert f"step_{save_step}" not in names, names  # never committed
    runs.launch_ok(command, tmp_path / "resumed.txt")  # no manual cleanup in between
    resumed = (tmp_path / "resumed.txt").read_text()
    # A step killed before its commit rename is complete: it is committed on relaunch. A step
    # killed earlier is incomplete: its scratch is removed and the previous step resumes.
    assert ("recovering" if fault == "kill_before_rename" else "removing") in resumed
    delta = _assert_same_run(out, reference)
    report(f"kill inside a save ({fault})", trial=0, passed=True, max_abs_dloss=delta)


def _preempt(runs: Any, out: Path, ranks: list[int], tmp_path: Path) -> Any:
    """SIGTERM ``ranks`` once step 3 is logged; the run must end within 40 s of the signal."""
    try:
        return run_and_signal_rank(
            runs.multi_rank(out), last_step_of(out / "metrics.jsonl"), 3, ranks=ranks,
            sig=signal.SIGTERM, timeout=runs.timeout, log=tmp_path / "stopped.txt", grace=40.0,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"ranks still running 40 s after SIGTERM to ranks {ranks} (killed)")


def _assert_preempted_then_resumed(
    runs: Any, out: Path, stopped: Any, reference: dict[str, Any], tmp_path: Path
) -> tuple[int, float]:
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    saved = max(s for s in read_jsonl_metrics(out / "metrics.jsonl"))
    assert stopped.signalled_at <= saved <= stopped.signalled_at + 1  # within one step
    assert saved < runs.steps
    step_dir = out / "checkpoints" / f"step_{saved}"
    assert (step_dir / "manifest.json").is_file()
    # every rank saved its part: its data position, RNG and DCP shard
    assert {p.name for p in step_dir.glob("*_rank*.pt")} == {
        "data_rank0.pt", "data_rank1.pt", "rng_rank0.pt", "rng_rank1.pt",
    }  # fmt: skip
    assert len(list((step_dir / "sharded").glob("*.distcp"))) == 2
    runs.launch_ok(runs.multi_rank(out), tmp_path / "resumed.txt")
    return saved, _assert_same_run(out, reference)


def test_sigterm_to_every_rank_saves_exits_zero_and_resumes(
    runs: Any, reference: dict[str, Any], report: Any, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    stopped = _preempt(runs, out, [0, 1], tmp_path)
    saved, delta = _assert_preempted_then_resumed(runs, out, stopped, reference, tmp_path)
    report("SIGTERM to every rank: save, exit 0, relaunch", trial=0, stop_step=saved,
           passed=True, max_abs_dloss=delta)  # fmt: skip


@pytest.mark.parametrize("rank", [1])
def test_sigterm_to_one_rank_saves_on_all_exits_zero_and_resumes(
    rank: int, runs: Any, reference: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    stopped = _preempt(runs, out, [rank], tmp_path)
    _assert_preempted_then_resumed(runs, out, stopped, reference, tmp_path)


def test_lora_two_rank_run_resumes(runs: Any, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lora = ("training.method=lora", "training.max_steps=2", "checkpointing.save_every_n_steps=1")
    runs.launch_ok(runs.multi_rank(out, *lora), tmp_path / "first.txt")
    result = runs.launch(runs.multi_rank(out, *lora[:1], "training.max_steps=3", "checkpointing.resume_overrides=[training.max_steps]"),
                         tmp_path / "resumed.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(read_jsonl_metrics(out / "metrics.jsonl")) == [1, 2, 3]
