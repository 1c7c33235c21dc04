"""Tensor parallel in every training recipe: 2 gloo ranks with ``distributed.tp_size=2`` record
the same per-step metrics as one process (1e-5), through the ``tune run`` CLI.

TP over LoRA layers (tune.dist shards the adapter factors with the base weight), full fine-tuning,
and the frozen models (preference reference, distillation teacher, each with its own TP plan).
GRPO also samples its rollouts from the TP-sharded policy (equal rewards mean equal samples) and
keeps a frozen reference (``kl_coef`` > 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tune.data.synthetic import synthetic_instruction_rows, write_preference_data
from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    TinyAssets,
    make_arithmetic_assets,
    make_tiny_assets,
    make_tiny_checkpoint,
    tiny_overrides,
    tune_command,
)

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

STEPS = 3
TIMEOUT = 300
PARITY = 1e-5
SHORT = (
    f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
    "checkpointing.save_every_n_steps=null", "logging.log_every_n_steps=1",
)  # fmt: skip
NO_EVAL = ("eval.every_n_steps=null", "eval.before_training=false")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tp_every_recipe")
    assets = make_tiny_assets(root / "assets")
    rows = synthetic_instruction_rows(240, seed=0)  # the text of make_tiny_assets' tokenizer
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    return {
        "assets": assets,
        # a smaller student than the teacher: each gets the TP plan of its own modules
        "student": make_tiny_checkpoint(root / "student", seed=1, tokenizer_text=text),
        "paired": write_preference_data(root / "pref", num_rows=80)["paired"],
        "arithmetic": make_arithmetic_assets(root / "arith", num_rows=96, held_out_rows=8),
    }


def _case(name: str, out: Path, inputs: dict[str, Any]) -> tuple[str, str, list[str], list[str]]:
    """(recipe, config, overrides, metric keys) of one case."""
    assets: TinyAssets = inputs["assets"]
    base = assets.checkpoint_dir
    if name == "sft_lora":
        overrides = tiny_overrides(assets, out, *NO_EVAL)
        return "sft", "sft/tiny_cpu_lora", overrides, ["loss", "grad_norm", "val_loss"]
    if name.startswith("preference"):
        method = name.rsplit("_", 1)[1]
        overrides = tiny_overrides(TinyAssets(base, inputs["paired"]), out,
                                   f"training.method={method}", "training.optimizer.lr=1e-3",
                                   *NO_EVAL)  # fmt: skip
        keys = ["loss", "reward_margin", "accuracy", "val_loss", "val_accuracy"]
        return "preference", "preference/tiny_cpu_dpo_lora", overrides, keys
    if name == "distill_lora":
        overrides = tiny_overrides(assets, out, f"model.checkpoint_dir={inputs['student']}",
                                   f"teacher.checkpoint_dir={base}", f"tokenizer.path={base}",
                                   *NO_EVAL)  # fmt: skip
        return "distill", "distill/tiny_cpu_lora", overrides, ["loss", "kl", "val_loss", "val_kl"]
    overrides = tiny_overrides(inputs["arithmetic"], out, "rollout.prompts_per_step=8",
                               "rollout.group_size=4", "eval.max_prompts=8",
                               "eval.every_n_steps=null", "eval.before_training=false",
                               "training.kl_coef=0.05")  # fmt: skip
    keys = ["loss", "grad_norm", "kl", "reward/mean", "completion_length", "eval/accuracy"]
    return "grpo", "grpo/tiny_cpu", overrides, keys


def _run(name: str, out: Path, inputs: dict[str, Any], tp: int) -> dict[str, dict[int, float]]:
    recipe, config, overrides, keys = _case(name, out, inputs)
    overrides = [*overrides, *SHORT, f"distributed.tp_size={tp}"]
    run_to_end(tune_command(recipe, config, overrides, nproc=tp), TIMEOUT)
    return {key: read_jsonl_metrics(out / "metrics.jsonl", key) for key in keys}


@pytest.mark.parametrize(
    "name", ["sft_lora", "preference_dpo_lora", "preference_dpo_full", "distill_lora", "grpo_full"]
)
def test_tp2_equals_one_process(name: str, inputs: dict[str, Any], tmp_path: Path) -> None:
    one = _run(name, tmp_path / "one", inputs, tp=1)
    two = _run(name, tmp_path / "tp2", inputs, tp=2)
    assert sorted(one["loss"]) == list(range(1, STEPS + 1))
    for key, values in one.items():
        assert values, f"{key} was not logged"
        assert sorted(two[key]) == sorted(values), key
        for step, value in values.items():
            assert two[key][step] == pytest.approx(value, abs=PARITY), (key, step)
    # What the run wrote is the same model: the adapter, or the full weights.
    weights = "adapter/adapter_model.safetensors" if "lora" in name else "model/model.safetensors"
    ours, theirs = load_file(tmp_path / "tp2" / weights), load_file(tmp_path / "one" / weights)
    assert sorted(ours) == sorted(theirs)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < PARITY
    assert all(not torch.equal(theirs[k], torch.zeros_like(theirs[k])) for k in theirs)
