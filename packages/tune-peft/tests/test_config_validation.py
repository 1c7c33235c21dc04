"""Bad adapter settings fail at construction or load, naming the field (and file) and the value."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tune.peft import MAX_RANK, MAX_SCALING, LoraConfig, from_peft_config, read_adapter_config

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1e30}, "LoraConfig.alpha: scaling alpha / r = 1.25e+29 (alpha=1e+30, r=8) is outside (0, 10000]"),
        ({"alpha": 1e5, "r": 1, "use_rslora": True}, "scaling alpha / sqrt(r) = 100000"),
        ({"alpha": NAN}, "LoraConfig.alpha: expected a finite number > 0, got nan"),
        ({"alpha": INF}, "LoraConfig.alpha: expected a finite number > 0, got inf"),
        ({"alpha": -16.0}, "LoraConfig.alpha: expected a finite number > 0, got -16.0"),
        ({"alpha": 0}, "LoraConfig.alpha: expected a finite number > 0, got 0"),
        ({"alpha": "16"}, "LoraConfig.alpha: expected a finite number > 0, got '16' (str)"),
        ({"alpha": True}, "LoraConfig.alpha: expected a finite number > 0, got True (bool)"),
        ({"r": 0}, "LoraConfig.r: expected a positive integer <= 65536, got 0"),
        ({"r": -4}, "LoraConfig.r: expected a positive integer <= 65536, got -4"),
        ({"r": 8.0}, "LoraConfig.r: expected a positive integer <= 65536, got 8.0"),
        ({"r": "8"}, "LoraConfig.r: expected a positive integer <= 65536, got '8' (str)"),
        ({"r": True}, "LoraConfig.r: expected a positive integer <= 65536, got True (bool)"),
        ({"r": MAX_RANK + 1}, f"LoraConfig.r: expected a positive integer <= 65536, got {MAX_RANK + 1}"),
        ({"dropout": NAN}, "LoraConfig.dropout: expected a number in [0, 1), got nan"),
        ({"dropout": 1.0}, "LoraConfig.dropout: expected a number in [0, 1), got 1.0"),
        ({"dropout": -0.1}, "LoraConfig.dropout: expected a number in [0, 1), got -0.1"),
        ({"dropout": "0.1"}, "LoraConfig.dropout: expected a number in [0, 1), got '0.1' (str)"),
        ({"use_rslora": "false"}, "LoraConfig.use_rslora: expected True or False, got 'false' (str)"),
        ({"use_dora": 1}, "LoraConfig.use_dora: expected True or False, got 1"),
        ({"targets": ["q_proj", ""]}, "LoraConfig.targets: patterns must be non-empty strings, got '' (str)"),
        ({"targets": ["q_proj", "  "]}, "LoraConfig.targets: patterns must be non-empty strings, got '  ' (str)"),
        ({"targets": ["q_proj", 3]}, "LoraConfig.targets: patterns must be non-empty strings, got 3"),
        ({"targets": []}, "LoraConfig.targets is empty"),
        ({"targets": 7}, "LoraConfig.targets: expected a string or a list of strings, got 7"),
        ({"exclude": [None]}, "LoraConfig.exclude: patterns must be non-empty strings, got None"),
    ],
)  # fmt: skip
def test_lora_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        LoraConfig(**kwargs)
    assert message in str(info.value)


def test_scaling_bound_is_inclusive_and_strings_are_single_patterns() -> None:
    assert LoraConfig(r=1, alpha=MAX_SCALING).scaling == MAX_SCALING
    assert LoraConfig(r=4, alpha=2 * MAX_SCALING, use_rslora=True).scaling == MAX_SCALING
    assert math.isclose(LoraConfig(r=16, alpha=32).scaling, 2.0)
    # a bare string is one pattern, not its characters
    assert LoraConfig(exclude="lm_head").exclude == ("lm_head",)  # type: ignore[arg-type]
    assert LoraConfig(head_names="output").head_names == ("output",)  # type: ignore[arg-type]


def _peft_dict(**change: Any) -> dict[str, Any]:
    base = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": False,
            "use_dora": False, "init_lora_weights": True}  # fmt: skip
    return {**base, **change}


def _write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "adapter" / "adapter_config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": "8"}, "r: expected a positive integer <= 65536, got '8' (str)"),
        ({"r": 0}, "r: expected a positive integer <= 65536, got 0"),
        ({"r": 8.5}, "r: expected a positive integer <= 65536, got 8.5"),
        ({"lora_alpha": NAN}, "lora_alpha: expected a finite number > 0, got nan"),
        ({"lora_alpha": 1e30}, "lora_alpha: scaling alpha / r = 1.25e+29 (alpha=1e+30, r=8) is outside (0, 10000]"),
        ({"lora_alpha": "16"}, "lora_alpha: expected a finite number > 0, got '16' (str)"),
        ({"lora_dropout": 1.5}, "lora_dropout: expected a number in [0, 1), got 1.5"),
        ({"target_modules": 5}, "target_modules: expected a non-empty string, a list of non-empty strings or null, got 5"),
        ({"target_modules": ["q_proj", 5]}, "target_modules: expected a non-empty string, a list of non-empty strings or null, got ['q_proj', 5]"),
        ({"target_modules": {"q_proj": True}}, "target_modules: expected a non-empty string"),
        ({"exclude_modules": [""]}, "exclude_modules: expected a non-empty string"),
        ({"use_rslora": "true"}, "use_rslora: expected True or False, got 'true' (str)"),
        ({"use_dora": 1}, "use_dora: expected True or False, got 1"),
        ({"bias": "some"}, "bias: expected one of ['none', 'all', 'lora_only'], got 'some'"),
        ({"peft_type": "IA3"}, "peft_type: expected 'LORA', got 'IA3'"),
        ({"peft_type": None}, "peft_type: expected 'LORA', got None"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights: 'loftq' is not supported"),
        ({"rank_pattern": {"q_proj": 4}}, "rank_pattern: {'q_proj': 4} is not supported by tune.peft"),
    ],
)  # fmt: skip
def test_adapter_config_file_errors_name_file_and_key(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, _peft_dict(**change))
    for source in (path, path.parent):  # the file or its directory
        with pytest.raises(ValueError) as info:
            from_peft_config(source)
        assert str(info.value).startswith(f"{path}: ")
        assert message in str(info.value)


def test_adapter_config_dict_errors_name_the_given_source() -> None:
    with pytest.raises(ValueError, match=r"^adapter_config\.json: lora_alpha: expected a finite"):
        from_peft_config(_peft_dict(lora_alpha=INF))
    with pytest.raises(ValueError, match=r"^runs/a/adapter_config\.json: r: required but missing"):
        from_peft_config(
            {"peft_type": "LORA", "lora_alpha": 8}, source="runs/a/adapter_config.json"
        )
    with pytest.raises(ValueError, match=r"adapter_config\.json: expected a JSON object, got list"):
        from_peft_config([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "message"), [([1, 2], "expected a JSON object, got list"), ("LORA", "expected a JSON object, got str")]
)  # fmt: skip
def test_non_object_json_is_refused(tmp_path: Path, content: Any, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=f"^{path}: {message}$"):
        read_adapter_config(path)
    with pytest.raises(ValueError, match=message):
        from_peft_config(path.parent)


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text("{'r': 8")
    with pytest.raises(ValueError, match=rf"^{path}: not valid JSON"):
        read_adapter_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no PEFT adapter config at"):
        read_adapter_config(tmp_path / "nowhere")


def test_valid_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, _peft_dict(lora_dropout=None, use_rslora=None, bias=None))
    config = from_peft_config(path.parent)
    assert config == LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj"))
