"""Secrets never reach printed or saved configs; the saved config loads back."""

from __future__ import annotations

from pathlib import Path

import yaml

from tune.recipes.config import (
    REDACTED,
    config_to_yaml,
    is_secret_key,
    load_config,
    redact,
    save_resolved_config,
)
from tune.recipes.sft import SFTConfig

TOKEN = "hf_" + "a1B2c3D4e5" * 4


def test_secret_key_names() -> None:
    for name in ("hf_token", "token", "api_key", "apikey", "WANDB_API_KEY", "client_secret",
                 "password", "aws_secret_key", "access_token", "credentials"):  # fmt: skip
        assert is_secret_key(name), name
    for name in ("tokenizer", "max_tokens", "pad_token", "eos_token", "tokens_per_second",
                 "secretary", "keep_last_n"):  # fmt: skip
        assert not is_secret_key(name), name


def test_redact_tree() -> None:
    tree = {
        "data": {"hf_token": TOKEN, "source": "x"},
        "logging": {"options": {"wandb": {"api_key": "k-123", "project": "p"}}},
        "notes": [TOKEN, "plain"],  # a token-shaped value under an innocent key
        "empty": {"token": None},
    }
    assert redact(tree) == {
        "data": {"hf_token": REDACTED, "source": "x"},
        "logging": {"options": {"wandb": {"api_key": REDACTED, "project": "p"}}},
        "notes": [REDACTED, "plain"],
        "empty": {"token": None},
    }


def test_saved_resolved_config_is_redacted_and_loads_back(sft_yaml, tmp_path: Path) -> None:
    cfg = load_config(
        sft_yaml(),
        SFTConfig,
        [
            f"logging.options.wandb.api_key={TOKEN}",
            "logging.loggers=[stdout, jsonl]",
            "logging.options.jsonl.api_key=k-secret",
        ],
    )
    assert cfg.logging.options["wandb"]["api_key"] == TOKEN  # the run itself still has it
    out = save_resolved_config(cfg, tmp_path / "run" / "config.yaml")
    text = out.read_text()
    assert TOKEN not in text
    assert "k-secret" not in text
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
