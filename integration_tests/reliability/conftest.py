"""Shared fixtures of the reliability suite: tiny assets, launch commands, fault injection.

Faults are injected without product hooks: a ``sitecustomize`` module placed on ``PYTHONPATH``
patches a function of tune.checkpoint / the sft loop inside the processes a launch starts (the
launcher, torchrun's ranks), selected by the ``TUNE_RELIABILITY_INJECT`` environment variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tune.dist.testing import clean_env, run_launch
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    TinyAssets,
    make_tiny_assets,
    run_in_process,
    tiny_overrides,
    tune_command,
)

STEPS = 8  # optimizer steps of every crash/resume run
SAVE_EVERY = 2
LAUNCH_TIMEOUT = 240.0  # hard limit for one launch; a hang fails the test instead of CI

# Loaded by every Python process of a launch when its directory is on PYTHONPATH. It acts only
# when TUNE_RELIABILITY_INJECT="<fault>:<step>:<where>" is set, and only in the processes named by
# <where>: "single" (a run without launcher), "all" ranks, or a comma-separated list of ranks.
INJECTION_SOURCE = """
import os

_spec = os.environ.get("TUNE_RELIABILITY_INJECT")


def _targeted(where):
    rank = os.environ.get("RANK")
    if where == "single":
        return rank is None
    if rank is None or "LOCAL_RANK" not in os.environ:
        return False
    return where == "all" or rank in where.split(",")


def _install(fault, at_step):
    import errno
    import signal

    import tune.checkpoint.training_state as ts

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if fault == "nan":
        import tune.recipes.sft.loop as loop
        import tune.train as tt

        seen = {"step": 0}
        start_step, loss_fn = tt.GradientAccumulator.start_step, loop.micro_batch_loss

        def counting_start_step(self, *args, **kwargs):
            seen["step"] += 1
            return start_step(self, *args, **kwargs)

        def poisoned_loss(*args, **kwargs):
            loss = loss_fn(*args, **kwargs)  # a TokenLoss: (loss_sum, count)
            if seen["step"] != at_step:
                return loss
            return type(loss)(loss[0] * float("nan"), *loss[1:])

        tt.GradientAccumulator.start_step = counting_start_step
        loop.micro_batch_loss = poisoned_loss
    elif fault == "kill_in_dcp_write":
        save_sharded = ts.save_sharded

        def killing_save_sharded(directory, state):
            if directory.parent.name == f".step_{at_step}.tmp":
                die()
            return save_sharded(directory, state)

        ts.save_sharded = killing_save_sharded
    elif fault == "kill_before_manifest":
        write_manifest = ts.write_manifest

        def killing_write_manifest(tmp, step, *args, **kwargs):
            if step == at_step:
                die()
            return write_manifest(tmp, step, *args, **kwargs)

        ts.write_manifest = killing_write_manifest
    elif fault == "kill_before_rename":
        commit = ts.CheckpointManager._commit

        def killing_commit(self, tmp, final):
            if final.name == f"step_{at_step}":
                die()
            return commit(self, tmp, final)

        ts.CheckpointManager._commit = killing_commit
    elif fault == "enospc":
        save = ts.torch_save_durable

        def full_disk(path, obj, fsync):
            if path.parent.name == f".step_{at_step}.tmp":
                # what write() reports when the disk fills: no file name in the error
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return save(path, obj, fsync)

        ts.torch_save_durable = full_disk
    else:
        raise ValueError(f"unknown fault {fault!r}")


if _spec:
    _fault, _step, _where = _spec.split(":")
    if _targeted(_where):
        _install(_fault, int(_step))
"""


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    """A tiny random Llama checkpoint (float32) and 240 instruction rows."""
    return make_tiny_assets(tmp_path_factory.mktemp("reliability_assets"))


@pytest.fixture(scope="session")
def inject(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, str]]:
    """``inject("nan:3:1")`` -> an environment that injects that fault into a launch."""
    site = tmp_path_factory.mktemp("inject_site")
    (site / "sitecustomize.py").write_text(INJECTION_SOURCE)

    def env(spec: str, **extra: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in [str(site), os.environ.get("PYTHONPATH")] if p)
        return clean_env(PYTHONPATH=path, TUNE_RELIABILITY_INJECT=spec, **extra)

    return env


@dataclass(frozen=True)
class Runs:
    """Command lines of the suite's runs over one set of tiny assets.

    Args:
        assets: the tiny checkpoint and data.
        steps: optimizer steps of every resume run.
        save_every: checkpoint interval.
        timeout: hard limit in seconds for one launch (a hang fails the test, not CI).
    """

    assets: TinyAssets
    steps: int = STEPS
    save_every: int = SAVE_EVERY
    timeout: float = LAUNCH_TIMEOUT

    def overrides(self, out: Path, *extra: str) -> list[str]:
        """8 steps, a save every 2, LoRA dropout on (so the RNG state matters), no validation."""
        return tiny_overrides(
            self.assets, out, f"training.max_steps={self.steps}",
            f"checkpointing.save_every_n_steps={self.save_every}",
            "checkpointing.save_merged=false", "eval.every_n_steps=null",
            "eval.before_training=false", "data.validation_fraction=0",
            "training.lora.dropout=0.1", "training.lr_schedule.warmup_steps=1", *extra,
        )  # fmt: skip

    def multi_rank(self, out: Path, *extra: str, nproc: int = 2) -> list[str]:
        """``tune run sft --standalone --nproc-per-node N --config sft/tiny_cpu_lora_2proc ...``.

        Full fine-tuning (``training.method=full``) unless ``extra`` says otherwise: LoRA runs on
        several ranks cannot resume yet (see test_crash_resume.py).
        """
        overrides = self.overrides(out, "training.method=full", *extra)
        return tune_command("sft", "sft/tiny_cpu_lora_2proc", overrides, nproc)

    def one_process(self, out: Path, *extra: str) -> list[str]:
        """``tune run sft --config sft/tiny_cpu_lora ...`` in one process."""
        return tune_command("sft", "sft/tiny_cpu_lora", self.overrides(out, *extra))

    def launch(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
        """Run a launch to its end under the hard timeout (returns the completed process)."""
        return run_launch(command, self.timeout, log, env)

    def launch_ok(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
        """``launch``, failing the test with the stderr tail unless it exits 0."""
        result = self.launch(command, log, env)
        assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr[-4000:]}"
        return result


@pytest.fixture(scope="session")
def runs(assets: TinyAssets) -> Runs:
    """Command lines over the session's tiny assets."""
    return Runs(assets)


@pytest.fixture(scope="session")
def reference(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted 2-rank run: per-step losses and its output directory."""
    out = tmp_path_factory.mktemp("reference") / "run"
    runs.launch_ok(runs.multi_rank(out), out.parent / "stderr.txt")
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return {"losses": losses, "out": out}


@pytest.fixture(scope="session")
def report() -> Callable[..., None]:
    """Append one result row to $TUNE_RELIABILITY_REPORT (jsonl) when set: the docs table's source."""
    target = os.environ.get("TUNE_RELIABILITY_REPORT")

    def record(test: str, **values: Any) -> None:
        if target:
            with open(target, "a") as f:
                f.write(json.dumps({"test": test, **values}) + "\n")

    return record


@dataclass
class InProcess:
    """Runs of the real sft loop in this process (the catalogue of bad inputs uses these)."""

    runs: Runs
    out: Path

    def overrides(self, *extra: str) -> list[str]:
        """Two steps, no saves, no validation: enough to reach step 0."""
        return tiny_overrides(
            self.runs.assets, self.out, "training.max_steps=2",
            "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false",
            "eval.every_n_steps=null", "eval.before_training=false",
            "data.validation_fraction=0", "training.lr_schedule.warmup_steps=0", *extra,
        )  # fmt: skip

    def run(self, *extra: str, config: str = "sft/tiny_cpu_lora") -> dict[str, Any]:
        """Run to the end; returns the loop's summary."""
        return run_in_process("sft", config, self.overrides(*extra))

    def fails(self, *extra: str, config: str = "sft/tiny_cpu_lora") -> BaseException:
        """Run, expecting an exception before any optimizer step; returns it."""
        with pytest.raises(Exception) as info:
            self.run(*extra, config=config)
        assert read_jsonl_metrics(self.out / "metrics.jsonl") == {}, "a step ran before the error"
        return info.value


@pytest.fixture
def in_process(runs: Runs, tmp_path: Path) -> Iterator[InProcess]:
    """In-process sft runs writing to ``tmp_path/out`` (one torch thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield InProcess(runs, tmp_path / "out")
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_in_process(runs: Runs) -> Callable[[Path], InProcess]:
    """``make_in_process(out)`` -> in-process runs writing to ``out`` (for wider-scoped fixtures)."""
    return lambda out: InProcess(runs, out)
