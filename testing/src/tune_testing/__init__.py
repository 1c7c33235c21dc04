"""Helpers for tests of the recipes, shared so that tests, examples and benchmarks make runs alike.

Development only (the never-published ``tune-testing`` distribution at ``testing/``).

A tiny random checkpoint and task data on disk (``make_tiny_assets``, ``make_arithmetic_assets``;
``make_tiny_checkpoint`` is ``tune.recipes.tiny_workspace``'s, the writer of ``tune init``),
the overrides that point a bundled tiny config at them (``tiny_overrides``), and a run in this
process (``run_in_process``) or through the ``tune`` command (``tune_command``, ``run_tune``)::

    assets = make_tiny_assets(tmp_path)
    summary = run_in_process("sft", "sft/tiny_cpu_lora", tiny_overrides(assets, tmp_path / "out"))

Launched runs are killed or signalled with ``tune.dist.testing``, whose polls take a progress
callable such as ``last_step_of(metrics_file)``; metrics are read with
``tune.train.loggers.read_jsonl_metrics``. Nothing here is used at training time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tune.data.synthetic import (
    arithmetic_rows,
    synthetic_instruction_rows,
    write_arithmetic_task,
    write_jsonl,
)
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config, load_recipe

# The tiny checkpoint writer is the one `tune init` uses; re-exported for the tests.
from tune.recipes.tiny_workspace import NF4_FRIENDLY_SIZES, TINY_SIZES, make_tiny_checkpoint
from tune.train.loggers import read_jsonl_metrics


@dataclass(frozen=True)
class TinyAssets:
    """A tiny base checkpoint, its training data file and, for RL, a held-out prompt file."""

    checkpoint_dir: Path
    data_file: Path
    held_out_file: Path | None = None


def make_tiny_assets(
    root: Path,
    *,
    num_rows: int = 240,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    architecture: Literal["llama", "qwen3_moe"] = "llama",
    num_layers: int | None = None,
) -> TinyAssets:
    """Write a tiny random Llama or Qwen3-MoE (NF4-friendly sizes; ``num_layers`` blocks, default
    2) and ``num_rows`` instruction rows."""
    rows = synthetic_instruction_rows(num_rows, seed=seed)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    ckpt = make_tiny_checkpoint(
        root / "base", tokenizer_text=text, seed=seed, tie_word_embeddings=tie_word_embeddings,
        architecture=architecture,
        **{**NF4_FRIENDLY_SIZES, **({"num_layers": num_layers} if num_layers else {})},
    )  # fmt: skip
    return TinyAssets(ckpt, write_jsonl(rows, root / "data.jsonl"))


def make_arithmetic_assets(
    root: Path,
    *,
    num_rows: int = 2000,
    held_out_rows: int = 128,
    seed: int = 0,
    max_total: int = 9,
    max_change: int = 3,
    teacher_mistakes: float = 0.0,
    tie_word_embeddings: bool = False,
) -> TinyAssets:
    """Write a tiny checkpoint whose BPE knows the arithmetic task, and the task's train and
    held-out files; ``teacher_mistakes`` applies to the training demonstrations only."""
    task = {"max_total": max_total, "max_change": max_change}
    sample = arithmetic_rows(600, seed=seed + 1, **task)
    text = [f"{r['prompt']} {r['messages'][1]['content']}" for r in sample]  # type: ignore[index]
    ckpt = make_tiny_checkpoint(
        root / "base", tokenizer_text=text, seed=seed, vocab_size=384,
        tie_word_embeddings=tie_word_embeddings, **TINY_SIZES,
    )  # fmt: skip
    train = write_arithmetic_task(
        root / "train.jsonl", num_rows, seed=seed + 1, teacher_mistakes=teacher_mistakes, **task
    )
    held_out = write_arithmetic_task(
        root / "held_out.jsonl", held_out_rows, seed=seed + 1000, **task
    )
    return TinyAssets(ckpt, train, held_out)


def tiny_overrides(assets: TinyAssets, out_dir: Path, *extra: str) -> list[str]:
    """Overrides pointing a bundled tiny config at ``assets``: short, quiet, a jsonl metrics line
    per step. A held-out file becomes the validation source; a later ``extra`` item wins."""
    held_out = [] if assets.held_out_file is None else [
        "data.validation_fraction=0.0", f"data.validation_source={assets.held_out_file}"
    ]  # fmt: skip
    return [
        f"model.checkpoint_dir={assets.checkpoint_dir}",
        f"data.source={assets.data_file}",
        *held_out,
        f"checkpointing.output_dir={out_dir}",
        "logging.progress_bar=false",
        "logging.loggers=[jsonl]",
        "logging.log_every_n_steps=1",
        "checkpointing.keep_last_n=10",
        *extra,
    ]


def run_in_process(recipe: str, config: str, overrides: Sequence[str]) -> Any:
    """Load a config (bundled name or path) of an installed recipe and run it in this process;
    returns what the recipe's ``run`` returns (the built-in ones: a summary dict)."""
    found = load_recipe(recipe)
    path, _ = find_config(config, recipe)
    return found.load_run()(load_config(path, found.config_class, overrides, recipe=recipe))


def tune_command(recipe: str, config: str, overrides: Sequence[str], nproc: int = 1) -> list[str]:
    """The ``tune run`` command line (through ``python -m tune.recipes``); ``nproc > 1``
    launches that many ranks with ``--standalone`` (a free rendezvous port each)."""
    launch = ["--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [sys.executable, "-m", "tune.recipes", "run", recipe, *launch, "--config", config,
            *overrides]  # fmt: skip


def last_step_of(metrics: Path) -> Callable[[], int]:
    """The progress of a run for ``tune.dist.testing``: the last step ``metrics`` records, or -1."""
    return lambda: max(read_jsonl_metrics(metrics), default=-1)


def run_tune(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m tune.recipes <args>` (the `tune` command) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "tune.recipes", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout,
    )  # fmt: skip
