"""Secrets never reach saved configs (tune-train's rule, tested there); the config loads back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tune.recipes.config import config_to_yaml, load_config, save_resolved_config
from tune.recipes.sft import SFTConfig
from tune.train.loggers.redaction import REDACTED

TOKEN = "hf_" + "a1B2c3D4e5" * 4


def test_saved_resolved_config_is_redacted_and_loads_back(
    sft_yaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SERVICE_SECRET", "envsecret42")
    cfg = load_config(
        sft_yaml(),
        SFTConfig,
        [
            f"logging.options.wandb.api_key={TOKEN}",
            "logging.loggers=[stdout, jsonl]",
            "logging.options.jsonl.api_key=k-secret",
            "logging.options.stdout.prefix=run-envsecret42",
        ],
    )
    assert cfg.logging.options["wandb"]["api_key"] == TOKEN  # the run itself still has it
    out = save_resolved_config(cfg, tmp_path / "run" / "config.yaml")
    text = out.read_text()
    assert TOKEN not in text
    assert "k-secret" not in text
    assert "envsecret42" not in text  # a secret environment value, wherever it appears
    assert yaml.safe_load(text)["logging"]["options"]["stdout"]["prefix"] == f"run-{REDACTED}"
    saved = yaml.safe_load(text)
    assert saved["logging"]["options"]["wandb"]["api_key"] == REDACTED
    assert saved["logging"]["options"]["jsonl"]["api_key"] == REDACTED
    # Resolved: interpolations are replaced by their values; defaults are written out.
    assert saved["logging"]["jsonl_path"] == cfg.logging.jsonl_path
    assert saved["training"]["lr_schedule"]["min_lr_ratio"] == 0.0
    assert not list(out.parent.glob(".config.yaml.*"))  # no temp file left behind
    # The saved file is a complete config of the same recipe.
    again = load_config(out, SFTConfig, recipe="sft")
    assert again.training == cfg.training
    assert again.logging.options["wandb"]["api_key"] == REDACTED
    assert config_to_yaml(again) == text
