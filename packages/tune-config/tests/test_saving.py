"""save_resolved_config: atomic, ordered YAML that loads back, with the caller's redaction."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune.config import config_to_yaml, save_resolved_config


@dataclasses.dataclass
class Opt:
    lr: float = 1e-3
    api_key: str = "sk-live-123"


@dataclasses.dataclass
class Cfg:
    name: str = "run"
    opt: Opt = dataclasses.field(default_factory=Opt)
    allow_imports: list[str] = dataclasses.field(default_factory=lambda: ["pkg.*"])


def _hide_keys(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: "<hidden>" if k == "api_key" else _hide_keys(v) for k, v in tree.items()}
    return tree


def test_yaml_is_ordered_redacted_and_drops_allow_imports() -> None:
    text = config_to_yaml(Cfg(), redact=_hide_keys)
    assert "sk-live-123" not in text
    assert list(yaml.safe_load(text)) == ["name", "opt"]
    assert yaml.safe_load(text)["opt"] == {"lr": 1e-3, "api_key": "<hidden>"}
    assert "sk-live-123" in config_to_yaml(Cfg())  # no rule given: written as is
    assert "allow_imports" in config_to_yaml(Cfg(), drop_keys=())


def test_save_is_atomic_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = save_resolved_config(Cfg(), tmp_path / "a" / "config.yaml", redact=_hide_keys)
    assert yaml.safe_load(out.read_text())["opt"]["api_key"] == "<hidden>"

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_resolved_config(Cfg(name="second"), out)
    assert yaml.safe_load(out.read_text())["name"] == "run"  # the old file is intact
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]
