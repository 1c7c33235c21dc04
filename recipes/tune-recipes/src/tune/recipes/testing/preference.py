"""Helpers for tests of the ``preference`` recipe: preference data files, runs, commands.

Shipped next to ``tune.recipes.testing.sft`` so integration tests share one way to make a run;
nothing here is used at training time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tune.data.synthetic import synthetic_preference_rows, write_jsonl
from tune.recipes.discovery import find_config


def unpaired_rows(num_rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """KTO rows from ``synthetic_preference_rows``: each pair split into a desirable and an
    undesirable example of the same prompt."""
    rows: list[dict[str, Any]] = []
    for pair in synthetic_preference_rows(num_rows // 2 + 1, seed):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows[:num_rows]


def write_preference_data(root: Path, *, num_rows: int = 200, seed: int = 0) -> dict[str, Path]:
    """``paired.jsonl`` (``synthetic_preference_rows``: chosen the right answer, rejected a
    wrong one) and ``unpaired.jsonl`` (the same answers as KTO examples)."""
    return {
        "paired": write_jsonl(synthetic_preference_rows(num_rows, seed), root / "paired.jsonl"),
        "unpaired": write_jsonl(unpaired_rows(num_rows, seed), root / "unpaired.jsonl"),
    }


def preference_overrides(
    checkpoint_dir: Path, data_file: Path, out_dir: Path, *extra: str
) -> list[str]:
    """Overrides pointing a bundled tiny config at local files, short and quiet."""
    return [
        f"model.checkpoint_dir={checkpoint_dir}",
        f"data.source={data_file}",
        f"checkpointing.output_dir={out_dir}",
        "logging.progress_bar=false",
        "logging.loggers=[jsonl]",
        "logging.log_every_n_steps=1",
        "checkpointing.keep_last_n=10",
        *extra,
    ]


def run_preference_in_process(config: str, overrides: list[str]) -> dict[str, Any]:
    """Load a bundled config (or a path) with overrides and run the loop in this process."""
    from tune.recipes.config import load_config
    from tune.recipes.preference.config import PreferenceConfig
    from tune.recipes.preference.loop import run

    path, _ = find_config(config, "preference")
    return run(load_config(path, PreferenceConfig, overrides))


def preference_command(config: str, overrides: list[str], nproc: int = 1) -> list[str]:
    """The ``tune run preference`` command line (through ``python -m tune.recipes``)."""
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [sys.executable, "-m", "tune.recipes", "run", "preference", *launch, "--config", config,
            *overrides]  # fmt: skip
