"""Helpers for tests of the ``grpo`` recipe: tiny assets on the arithmetic task, run commands.

Shipped so that integration tests share one way to make a run; nothing here is used at training
time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.recipes.discovery import find_config
from tune.recipes.grpo.toy_task import arithmetic_rows, write_arithmetic_task
from tune.recipes.tiny_checkpoint import make_tiny_checkpoint

TINY_SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
}


@dataclass(frozen=True)
class ArithmeticAssets:
    """A tiny random checkpoint whose tokenizer knows the task, and train/held-out prompt files."""

    checkpoint_dir: Path
    train_file: Path
    held_out_file: Path


def make_arithmetic_assets(
    root: Path,
    *,
    num_rows: int = 2000,
    held_out_rows: int = 128,
    seed: int = 0,
    max_total: int = 9,
    max_change: int = 3,
    teacher_mistakes: float = 0.0,
) -> ArithmeticAssets:
    """Write the checkpoint (BPE trained on the task's text) and the task files under ``root``.

    ``teacher_mistakes`` applies to the training file's demonstrations only; the held-out file
    is always clean.
    """
    task = {"max_total": max_total, "max_change": max_change}
    sample = arithmetic_rows(600, seed=seed + 1, **task)
    text = [f"{r['prompt']} {r['messages'][1]['content']}" for r in sample]  # type: ignore[index]
    ckpt = make_tiny_checkpoint(
        root / "base", tokenizer_text=text, seed=seed, vocab_size=384, **TINY_SIZES
    )
    train = write_arithmetic_task(
        root / "train.jsonl", num_rows, seed=seed + 1, teacher_mistakes=teacher_mistakes, **task
    )
    held_out = write_arithmetic_task(
        root / "held_out.jsonl", held_out_rows, seed=seed + 1000, **task
    )
    return ArithmeticAssets(ckpt, train, held_out)


def grpo_overrides(
    checkpoint_dir: Path, assets: ArithmeticAssets, out_dir: Path, *extra: str
) -> list[str]:
    """Overrides pointing ``grpo/tiny_cpu`` at local files, quiet, one metrics line per step."""
    return [
        f"model.checkpoint_dir={checkpoint_dir}",
        f"data.source={assets.train_file}",
        "data.validation_fraction=0.0",
        f"data.validation_source={assets.held_out_file}",
        f"checkpointing.output_dir={out_dir}",
        "logging.progress_bar=false",
        "logging.loggers=[jsonl]",
        "logging.log_every_n_steps=1",
        "checkpointing.keep_last_n=10",
        *extra,
    ]


def run_grpo_in_process(config: str, overrides: list[str]) -> dict[str, Any]:
    """Load a bundled config (or a path) with overrides and run the loop in this process."""
    from tune.recipes.config import load_config
    from tune.recipes.grpo.config import GRPOConfig
    from tune.recipes.grpo.loop import run

    path, _ = find_config(config, "grpo")
    return run(load_config(path, GRPOConfig, overrides))


def grpo_command(config: str, overrides: list[str]) -> list[str]:
    """The ``tune run grpo`` command line (through ``python -m tune.recipes``)."""
    return [sys.executable, "-m", "tune.recipes", "run", "grpo", "--config", config, *overrides]
