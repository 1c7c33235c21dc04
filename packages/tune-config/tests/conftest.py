"""tune-config tests: a small schema (config_test_schema.py) and a YAML writer."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

# The uniquely named helper module lives next to the tests; nothing here imports another library.
sys.path.insert(0, str(Path(__file__).parent))

BASE = {
    "recipe": "train",
    "output_dir": "out",
    "log_path": "${output_dir}/metrics.jsonl",
    "data": {"source": "train.jsonl", "max_seq_len": 64, "column_map": {"prompt": "q"}},
    "training": {
        "method": "lora",
        "max_steps": 10,
        "optimizer": {"name": "adamw", "lr": 0.001},
        "loggers": ["stdout"],
    },
}


@pytest.fixture(autouse=True)
def _no_allow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNE_ALLOW_IMPORTS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """Write a config: ``text`` as given, or the base tree with top-level ``edits`` merged in."""

    def write(text: str | None = None, name: str = "cfg.yaml", **edits: object) -> Path:
        if text is None:
            tree = yaml.safe_load(yaml.safe_dump(BASE))
            for key, value in edits.items():
                if isinstance(value, dict) and isinstance(tree.get(key), dict):
                    tree[key].update(value)
                else:
                    tree[key] = value
            text = yaml.safe_dump(tree, sort_keys=False)
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
