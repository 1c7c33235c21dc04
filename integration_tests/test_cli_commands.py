"""The installed `tune` console script end to end: ls, cp → edit → validate, cat, run, download."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

TUNE = shutil.which("tune")


def _tune(*args: str, cwd: Path | None = None, env: dict | None = None):
    assert TUNE is not None, "the `tune` console script is not installed"
    return subprocess.run(
        [TUNE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_ls_lists_sft_and_its_configs() -> None:
    result = _tune("ls")
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["sft", "tune-recipes"] for line in result.stdout.splitlines())
    assert "sft/tiny_cpu_lora" in result.stdout


def test_cp_edit_validate_round_trip(tmp_path: Path) -> None:
    dest = tmp_path / "my.yaml"
    assert _tune("cp", "sft/tiny_cpu_lora", str(dest)).returncode == 0
    tree = yaml.safe_load(dest.read_text())
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    tree["model"]["checkpoint_dir"] = str(ckpt)
    tree["data"]["source"] = str(data)
    dest.write_text(yaml.safe_dump(tree))
    ok = _tune("validate", str(dest), "--world-size", "2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith("is a valid 'sft' config (world size 2)")
    bad = _tune("validate", str(dest), "training.optimizer.lr=0", "training.lora.rr=4")
    assert bad.returncode == 2
    assert "training.lora.rr: unknown key (did you mean 'training.lora.r'?)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_bundled_config_validates_through_the_cli() -> None:
    listing = _tune("ls").stdout.splitlines()
    names = [line.split()[0] for line in listing if line.startswith("sft/")]
    assert len(names) >= 10
    for name in names:
        result = _tune("validate", name)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_cat_matches_cp(tmp_path: Path) -> None:
    cat = _tune("cat", "sft/qwen2_5_0_5b_full")
    assert _tune("cp", "sft/qwen2_5_0_5b_full", str(tmp_path)).returncode == 0
    assert cat.stdout == (tmp_path / "qwen2_5_0_5b_full.yaml").read_text()


def test_download_offline_is_one_line(tmp_path: Path) -> None:
    result = _tune(
        "download", "Qwen/Qwen2.5-0.5B", "--output-dir", str(tmp_path / "m"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("tune download: error: cannot download Qwen/Qwen2.5-0.5B")
