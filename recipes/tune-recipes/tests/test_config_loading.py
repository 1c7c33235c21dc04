"""Loading: closed keys with did-you-mean (file:line), types, enums, overrides typed by schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tune.recipes.config import ConfigError, load_config, parse_override
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


def test_misspelled_nested_key_names_full_key_file_line_and_suggestion(sft_yaml) -> None:
    text = sft_yaml().read_text().replace("    lr: 0.001", "    lrr: 0.001")
    path = sft_yaml(text, name="typo.yaml")
    line = text.splitlines().index("    lrr: 0.001") + 1
    with pytest.raises(ConfigError) as exc:
        load_config(path, SFTConfig)
    assert exc.value.key == "training.optimizer.lrr"
    assert str(exc.value) == (
        f"{path}:{line}: training.optimizer.lrr: unknown key "
        "(did you mean 'training.optimizer.lr'?)"
    )


def test_right_name_in_the_wrong_section_is_suggested(sft_yaml) -> None:
    path = sft_yaml(sft_yaml().read_text() + "warmup_steps: 3\n", name="misplaced.yaml")
    with pytest.raises(ConfigError, match=r"did you mean 'training.lr_schedule.warmup_steps'"):
        load_config(path, SFTConfig)


def test_unknown_override_key_names_the_command_line(sft_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, ["training.lora.rank=4"])
    assert exc.value.key == "training.lora.rank"
    assert "command line (training.lora.rank=...)" in str(exc.value)
    assert "did you mean 'training.lora.r'" in str(exc.value)


def test_a_mistyped_secret_override_is_never_echoed(sft_yaml, capsys) -> None:
    from tune.recipes.cli import main

    secret = "hf_" + "S3cr3t" * 6
    for item in [f"data.hf_tokn={secret}", f"data.max_seq_len={secret}", secret]:
        assert main(["validate", str(sft_yaml()), item]) == 2
        err = capsys.readouterr().err
        assert secret not in err, err
        assert err.count("\n") == 1, err


def test_wrong_type_names_key_expected_type_and_value(sft_yaml) -> None:
    text = sft_yaml().read_text().replace("max_steps: 60", "max_steps: sixty")
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(text, name="t.yaml"), SFTConfig)
    assert exc.value.key == "training.max_steps"
    assert "expected an integer or null, got 'sixty'" in str(exc.value)
    with pytest.raises(ConfigError, match=r"packing: expected a boolean"):
        load_config(sft_yaml(), SFTConfig, ["data.packing=3"])
    with pytest.raises(ConfigError, match=r"training.lora.targets: expected a list of str"):
        load_config(sft_yaml(), SFTConfig, ["training.lora.targets=q_proj"])


def test_bad_enum_lists_the_allowed_values(sft_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(sft_yaml(), SFTConfig, ["training.method=lorra"])
    assert exc.value.key == "training.method"
    assert "expected one of 'full', 'lora', 'qlora', 'dora', got 'lorra'" in str(exc.value)
    with pytest.raises(ConfigError, match=r"model.dtype: expected one of 'float32', 'bfloat16'"):
        load_config(sft_yaml(), SFTConfig, ["model.dtype=fp16"])


def test_missing_required_key(sft_yaml) -> None:
    text = "recipe: sft\nmodel:\n  dtype: float32\ndata:\n  source: x.jsonl\n"
    with pytest.raises(ConfigError, match=r"model.checkpoint_dir: is required \(str\) but missing"):
        load_config(sft_yaml(text, name="m.yaml"), SFTConfig)


def test_config_for_another_recipe_is_refused(sft_yaml) -> None:
    path = sft_yaml(sft_yaml().read_text().replace("recipe: sft", "recipe: dpo"), name="d.yaml")
    with pytest.raises(ConfigError, match=r"recipe: config is for recipe 'dpo', not 'sft'"):
        load_config(path, SFTConfig, recipe="sft")


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing, SFTConfig)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, SFTConfig)


@dataclass
class _Inner:
    ratio: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class _Schema:
    name: str = "x"
    code: str = "a"
    count: int = 1
    ratio: float = 1.0
    maybe: int | None = 3
    inner: _Inner = field(default_factory=_Inner)
    extra: dict[str, int] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("code=007", ("code", "007")),  # a str field keeps the text verbatim
        ("name=true", ("name", "true")),
        ("count=12", ("count", 12)),
        ("ratio=1e-4", ("ratio", 1e-4)),  # YAML 1.1 alone would read this as a string
        ("maybe=null", ("maybe", None)),
        ("inner.names=[a, b]", ("inner.names", ["a", "b"])),
        ("extra.anything=5", ("extra.anything", 5)),  # keys below a dict field are open
        ("recipe=sft", ("recipe", "sft")),  # reserved top-level keys
    ],
)
def test_overrides_are_typed_by_the_schema(item: str, expected: tuple) -> None:
    assert parse_override(_Schema, item) == expected


def test_malformed_override_items() -> None:
    with pytest.raises(ConfigError, match="overrides are written key=value"):
        parse_override(_Schema, "count")
    with pytest.raises(ConfigError, match=r"ratio: expected float, got 'fast'"):
        parse_override(_Schema, "ratio=fast")


def test_overrides_reach_the_loaded_config(sft_yaml) -> None:
    cfg = load_config(
        sft_yaml(),
        SFTConfig,
        [
            "training.method=dora",
            "training.lora.r=4",
            "data.column_map.prompt=instruction",
            "checkpointing.resume=never",
            "training.max_grad_norm=null",
        ],
    )
    assert (cfg.training.method, cfg.training.lora.r) == ("dora", 4)
    assert cfg.data.column_map == {"prompt": "instruction"}
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
    ],
)
def test_did_you_mean_suggestions(item: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_override(SFTConfig, item)
    assert str(exc.value).endswith(f"unknown key (did you mean '{suggestion}'?)")
