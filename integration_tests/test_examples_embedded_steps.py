"""The DPO, distillation and GRPO steps in plain loops (examples/embedded/) equal the recipes.

Each example runs in a subprocess in which `tune.recipes` cannot be imported (and its source is
checked to import it nowhere); its per-step losses must equal those the recipe logs for the same
model, data and settings within rel 1e-5.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tune.data.synthetic import synthetic_instruction_rows, write_preference_data
from tune.recipes.cli import main as tune_main
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    NF4_FRIENDLY_SIZES,
    TinyAssets,
    make_arithmetic_assets,
    make_tiny_assets,
    make_tiny_checkpoint,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "embedded"
STEPS = 3
LAUNCHER = (
    "import runpy, sys\n"
    "sys.modules['tune.recipes'] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
# Settings both sides share: no hold-out, a constant lr, no weight decay, one line per step.
COMMON = [
    "data.validation_fraction=0", f"training.max_steps={STEPS}",
    "training.lr_schedule.name=constant", "training.lr_schedule.warmup_steps=0",
    "training.optimizer.weight_decay=0", "eval.before_training=false", "eval.every_n_steps=null",
    "logging.loggers=[jsonl]", "logging.log_every_n_steps=1", "logging.progress_bar=false",
    "checkpointing.save_merged=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    return make_tiny_assets(tmp_path_factory.mktemp("embedded_steps"), num_rows=96)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def _example_losses(name: str, *args: str) -> list[float]:
    script = EXAMPLES / name
    assert not [m for m in _imports(script) if m.startswith("tune.recipes")]
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(script), *args, "--steps", str(STEPS)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    return [r["loss"] for r in lines]


def _recipe_losses(recipe: str, config: str, out: Path, *overrides: str) -> list[float]:
    argv = ["run", recipe, "--config", config, f"checkpointing.output_dir={out}", *COMMON,
            *overrides]  # fmt: skip
    assert tune_main(argv) == 0
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return [losses[s] for s in range(1, STEPS + 1)]


def test_dpo_loop_equals_the_preference_recipe(assets: TinyAssets, tmp_path: Path) -> None:
    pairs = write_preference_data(tmp_path, num_rows=64)["paired"]
    expected = _recipe_losses(
        "preference", "preference/tiny_cpu_dpo_lora", tmp_path / "recipe",
        f"model.checkpoint_dir={assets.checkpoint_dir}", f"data.source={pairs}",
        "training.optimizer.lr=2e-3",
    )  # fmt: skip
    losses = _example_losses(
        "dpo_loop.py", "--checkpoint", str(assets.checkpoint_dir), "--data", str(pairs),
        "--lr", "2e-3", "--output-dir", str(tmp_path / "example"),
    )  # fmt: skip
    assert losses == pytest.approx(expected, rel=1e-5)
    assert len(set(losses)) == STEPS  # the steps trained: not one loss repeated
    assert (tmp_path / "example" / "adapter" / "adapter_model.safetensors").is_file()


def test_distillation_loop_equals_the_distill_recipe(assets: TinyAssets, tmp_path: Path) -> None:
    # A teacher with other weights and the same tokenizer (trained on the same text).
    rows = synthetic_instruction_rows(96, seed=0)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    teacher = make_tiny_checkpoint(
        tmp_path / "teacher", tokenizer_text=text, seed=1, **NF4_FRIENDLY_SIZES
    )
    expected = _recipe_losses(
        "distill", "distill/tiny_cpu_lora", tmp_path / "recipe",
        f"model.checkpoint_dir={assets.checkpoint_dir}", f"teacher.checkpoint_dir={teacher}",
        f"data.source={assets.data_file}", "data.padding_free=false",
        "training.optimizer.lr=1e-3",
    )  # fmt: skip
    losses = _example_losses(
        "distill_loop.py", "--student", str(assets.checkpoint_dir), "--teacher", str(teacher),
        "--data", str(assets.data_file), "--lr", "1e-3",
    )  # fmt: skip
    assert losses == pytest.approx(expected, rel=1e-5)
    assert len(set(losses)) == STEPS


def test_grpo_loop_equals_the_grpo_recipe(assets: TinyAssets, tmp_path: Path) -> None:
    task = make_arithmetic_assets(tmp_path / "arith", num_rows=96, held_out_rows=8)
    expected = _recipe_losses(
        "grpo", "grpo/tiny_cpu", tmp_path / "recipe",
        f"model.checkpoint_dir={assets.checkpoint_dir}", f"data.source={task.data_file}",
        "training.updates_per_rollout=1", "training.optimizer.lr=5e-4",
    )  # fmt: skip
    losses = _example_losses(
        "grpo_loop.py", "--checkpoint", str(assets.checkpoint_dir), "--data", str(task.data_file),
        "--lr", "5e-4",
    )  # fmt: skip
    assert losses == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert len(set(losses)) == STEPS
