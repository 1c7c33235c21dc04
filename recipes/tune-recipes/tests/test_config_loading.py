"""The recipes' configs load through tune.config: bundled SFT config, overrides, secrets, keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.config import ConfigError, parse_override
from tune.recipes.config import load_config
from tune.recipes.sft import SFTConfig


def test_valid_config_loads_into_typed_dataclasses(sft_yaml, sft_dirs) -> None:
    cfg = load_config(sft_yaml(), SFTConfig)
    assert isinstance(cfg, SFTConfig)
    assert cfg.training.method == "lora"
    assert cfg.training.optimizer.lr == pytest.approx(1e-3)
    assert isinstance(cfg.training.lora.alpha, float)  # `alpha: 16` in YAML, float in the schema
    assert cfg.training.lora.targets[-1] == "down_proj"
    assert cfg.tokenizer_dir == str(sft_dirs["checkpoint"])
    # 8 sequences per step / (1 rank x 4 per micro-batch) = 2 micro-batches.
    assert cfg.training.gradient_accumulation_steps(1) == 2
    # Interpolation: ${checkpointing.output_dir}/metrics.jsonl.
    assert cfg.logging.jsonl_path == str(sft_dirs["root"] / "out" / "metrics.jsonl")


def test_interpolation_sees_overrides(sft_yaml, tmp_path: Path) -> None:
    cfg = load_config(sft_yaml(), SFTConfig, [f"checkpointing.output_dir={tmp_path}/run2"])
    assert cfg.logging.jsonl_path == f"{tmp_path}/run2/metrics.jsonl"


def test_a_mistyped_secret_override_is_never_echoed(sft_yaml, capsys) -> None:
    from tune.recipes.cli import main

    secret = "hf_" + "S3cr3t" * 6
    for item in [f"data.hf_tokn={secret}", f"data.max_seq_len={secret}", secret]:
        assert main(["validate", str(sft_yaml()), item]) == 2
        err = capsys.readouterr().err
        assert secret not in err, err
        assert err.count("\n") == 1, err


def test_override_locations_go_through_tune_trains_redaction(sft_yaml) -> None:
    from tune.recipes.config import redact_override

    secret = "sk-" + "S3cr3t" * 5
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, [f"training.optimizer.name={secret}"])
    assert exc.value.line == "command line ('training.optimizer.name=***')"
    # By the key's name, whatever the value's shape.
    assert redact_override("x.api_key=plain words", "x.api_key") == "x.api_key=***"
    assert redact_override("x.name=plain words", "x.name") == "x.name=plain words"


def test_bad_enum_lists_the_allowed_values(sft_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, ["training.method=lorra"])
    assert exc.value.key == "training.method"
    assert "expected one of 'full', 'lora', 'qlora', 'dora', got 'lorra'" in str(exc.value)
    with pytest.raises(ConfigError, match=r"model.dtype: expected one of 'float32', 'bfloat16'"):
        load_config(sft_yaml(), SFTConfig, ["model.dtype=fp16"])


def test_overrides_reach_the_loaded_config(sft_yaml) -> None:
    cfg = load_config(
        sft_yaml(),
        SFTConfig,
        [
            "training.method=dora",
            "training.lora.r=4",
            "data.column_map.instruction=prompt",
            "checkpointing.resume=never",
            "training.max_grad_norm=null",
        ],
    )
    assert (cfg.training.method, cfg.training.lora.r) == ("dora", 4)
    assert cfg.data.column_map == {"instruction": "prompt"}
    assert cfg.checkpointing.resume == "never"
    assert cfg.training.max_grad_norm is None


@pytest.mark.parametrize(
    ("item", "suggestion"),
    [
        ("distributed.tp=2", "distributed.tp_size"),  # abbreviation
        ("data.max_seqlen=3", "data.max_seq_len"),  # typo
        ("model.checkpoint=x", "model.checkpoint_dir"),
        ("trainng.method=full", "training.method"),  # misspelled section
        ("warmup_steps=1", "training.lr_schedule.warmup_steps"),  # wrong section
        ("training.lora.rank=4", "training.lora.r"),
    ],
)
def test_did_you_mean_suggestions(item: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_override(SFTConfig, item)
    assert str(exc.value).endswith(f"unknown key (did you mean '{suggestion}'?)")
