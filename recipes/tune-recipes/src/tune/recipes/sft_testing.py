"""Helpers for tests of the ``sft`` recipe: tiny assets, in-process and CLI runs, metric reading.

Shipped so that the integration tests and other packages' recipe tests share one way to make a
run; nothing here is used at training time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.data.synthetic import synthetic_instruction_rows, write_jsonl
from tune.recipes.discovery import find_config
from tune.recipes.tiny_checkpoint import make_tiny_checkpoint

# Linear layers whose sizes are multiples of 16,384 elements, so NF4 (QLoRA) applies to all.
NF4_FRIENDLY_SIZES = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 4,
    "intermediate_size": 256,
}


@dataclass(frozen=True)
class TinyAssets:
    """A tiny base checkpoint and an instruction dataset on disk."""

    checkpoint_dir: Path
    data_file: Path


def make_tiny_assets(root: Path, *, num_rows: int = 240, seed: int = 0) -> TinyAssets:
    """Write a tiny random Llama checkpoint (NF4-friendly sizes) and ``num_rows`` instruction rows."""
    rows = synthetic_instruction_rows(num_rows, seed=seed)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    ckpt = make_tiny_checkpoint(root / "base", tokenizer_text=text, seed=seed, **NF4_FRIENDLY_SIZES)
    data = write_jsonl(rows, root / "data.jsonl")
    return TinyAssets(ckpt, data)


def sft_overrides(assets: TinyAssets, out_dir: Path, *extra: str) -> list[str]:
    """Overrides that point a bundled tiny config at ``assets`` and keep the run short and quiet."""
    return [
        f"model.checkpoint_dir={assets.checkpoint_dir}",
        f"data.source={assets.data_file}",
        f"checkpointing.output_dir={out_dir}",
        "logging.progress_bar=false",
        "logging.loggers=[jsonl]",
        "logging.log_every_n_steps=1",
        "checkpointing.keep_last_n=10",
        *extra,
    ]


def run_sft_in_process(config: str, overrides: list[str]) -> dict[str, Any]:
    """Load a bundled config (or a path) with overrides and run the loop in this process."""
    from tune.recipes.config import load_config
    from tune.recipes.sft.config import SFTConfig
    from tune.recipes.sft.loop import run

    path, _ = find_config(config, "sft")
    return run(load_config(path, SFTConfig, overrides))


def tune_command(config: str, overrides: list[str], nproc: int = 1) -> list[str]:
    """The ``tune run sft`` command line (through ``python -m tune.recipes``)."""
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [
        sys.executable,
        "-m",
        "tune.recipes",
        "run",
        "sft",
        *launch,
        "--config",
        config,
        *overrides,
    ]


def read_metrics(path: Path, key: str = "loss") -> dict[int, float]:
    """``step -> value`` of one metric from a jsonl log (a later line for a step wins)."""
    values: dict[int, float] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if key in record:
            values[int(record["step"])] = float(record[key])
    return values


def run_and_kill_at(command: list[str], metrics: Path, kill_after_step: int, timeout: float) -> int:
    """Start ``command``; SIGKILL it once ``metrics`` records ``kill_after_step``. Returns the step seen."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            steps = read_metrics(metrics)
            if steps and max(steps) >= kill_after_step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return max(steps)
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(
                    f"run ended (exit {proc.returncode}) before step {kill_after_step}:\n{err[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"step {kill_after_step} not reached in {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run_to_end(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` under a hard timeout; raise with its stderr tail if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result
