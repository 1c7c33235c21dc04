"""``model.checkpoint_dir`` may be a Hub id (fetched into huggingface_hub's cache, then offline),
and the PEFT adapter names its base so that peft finds it from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune.recipes.cli import main
from tune_testing import TinyAssets, tiny_overrides

SHORT = ("training.max_steps=2", "training.lr_schedule.warmup_steps=0", "eval.every_n_steps=null",
         "eval.before_training=false", "checkpointing.save_merged=false")  # fmt: skip
COMMIT = "1" * 40


def _hub_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """huggingface_hub's cache holding ``model_dir`` as the main snapshot of ``repo_id``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    return root


def _offline_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_a_cached_hub_id_trains_offline_and_the_adapter_names_it(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    cache = _hub_cache(tmp_path / "hub", "tune-tests/tiny-llama", tiny_assets.checkpoint_dir)
    out = tmp_path / "out"
    overrides = tiny_overrides(tiny_assets, out, *SHORT,
                               "model.checkpoint_dir=tune-tests/tiny-llama")  # fmt: skip
    command = [sys.executable, "-m", "tune.recipes", "run", "sft", "--config", "sft/tiny_cpu_lora"]
    result = subprocess.run([*command, *overrides], capture_output=True, text=True,
                            env=_offline_env(cache), timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tune-tests/tiny-llama"


def test_an_uncached_hub_id_offline_is_one_line_in_validate(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tune.recipes", "validate", "sft/tiny_cpu_lora", "--paths", "error",
         "model.checkpoint_dir=tune-tests/never-downloaded"],
        capture_output=True, text=True, env=_offline_env(tmp_path / "empty"), timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "model.checkpoint_dir" in line]
    assert len(lines) == 1, result.stderr
    assert (
        "directory not found locally: tune-tests/never-downloaded (nor, as a Hugging Face Hub id"
        in lines[0]
    )
    assert "HF_HUB_OFFLINE=1" in lines[0]


def test_a_relative_base_is_recorded_absolute_so_peft_loads_from_elsewhere(
    tiny_assets: TinyAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peft = pytest.importorskip("peft")
    workdir = tmp_path / "work"
    shutil.copytree(tiny_assets.checkpoint_dir, workdir / "checkpoints" / "tiny")
    monkeypatch.chdir(workdir)
    overrides = tiny_overrides(TinyAssets(Path("checkpoints/tiny"), tiny_assets.data_file),
                               tmp_path / "out", *SHORT)  # fmt: skip
    assert main(["run", "sft", "--config", "sft/tiny_cpu_lora", *overrides]) == 0
    adapter = tmp_path / "out" / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(workdir / "checkpoints" / "tiny")
    monkeypatch.chdir(tmp_path)  # somewhere else: the relative path would no longer resolve
    model = peft.AutoPeftModelForCausalLM.from_pretrained(adapter, torch_dtype=torch.float32)
    assert model.peft_config["default"].base_model_name_or_path == base
