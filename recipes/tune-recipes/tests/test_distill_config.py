"""DistillConfig.validate: each check names its key; every bundled distill config validates."""

from __future__ import annotations

from pathlib import Path

import pytest

import tune.recipes
from tune.config import ConfigValidationError, ValidationContext, validate_config
from tune.recipes.config import load_config
from tune.recipes.distill.config import DistillConfig

CONFIG_DIR = Path(tune.recipes.__file__).parent / "configs" / "distill"
BUNDLED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_config_validates(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.yaml", DistillConfig, recipe="distill", validate=False)
    for world_size in [1, 2] if name.endswith("_2proc") else [1]:
        warnings = validate_config(cfg, ValidationContext(world_size, missing_paths="warn"))
        assert all(w.severity == "warning" for w in warnings)
        assert {w.key for w in warnings} <= {
            "model.checkpoint_dir", "teacher.checkpoint_dir", "data.source"
        }  # fmt: skip


def test_bundled_set_covers_methods_kinds_and_families() -> None:
    configs = [
        load_config(CONFIG_DIR / f"{n}.yaml", DistillConfig, validate=False) for n in BUNDLED
    ]
    assert {c.training.method for c in configs} == {"full", "lora"}
    assert {c.distillation.kind for c in configs} >= {"forward", "symmetric"}
    assert any(n.startswith("llama3") for n in BUNDLED)
    assert any(n.startswith("qwen") for n in BUNDLED)


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("distillation.ce_weight=1.5", "distillation.ce_weight", "[0.0, 1.0"),
        ("distillation.temperature=0", "distillation.temperature", "must be > 0"),
        ("distillation.symmetric_mix=-0.1", "distillation.symmetric_mix", "[0.0, 1.0"),
        ("distillation.chunk_size=0", "distillation.chunk_size", "must be > 0"),
        ("distributed.tp_size=2", "distributed.tp_size", "does not divide the world size 1"),
        ("training.activation_offloading=true", "training.activation_offloading", "not supported"),
        ("teacher.checkpoint_dir=/no/such/teacher", "teacher.checkpoint_dir", "/no/such/teacher"),
        ("training.global_batch_size=7", "training.global_batch_size", "not divisible"),
    ],
)
def test_bad_values_name_their_key(override: str, key: str, message: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    overrides = [f"model.checkpoint_dir={ckpt}", f"teacher.checkpoint_dir={ckpt}",
                 f"data.source={data}", override]  # fmt: skip
    with pytest.raises(ConfigValidationError) as info:
        load_config(CONFIG_DIR / "tiny_cpu_full.yaml", DistillConfig, overrides)
    found = [i.message for i in info.value.issues if i.key == key and i.severity == "error"]
    assert found, str(info.value)
    assert message in found[0], str(info.value)
    assert f"{key}: {found[0]}" in str(info.value)


def test_tune_validate_lists_the_recipe_config(capsys: pytest.CaptureFixture[str]) -> None:
    from tune.recipes.cli import main

    assert main(["validate", "distill/tiny_cpu_lora"]) == 0
    out = capsys.readouterr().out
    assert "teacher.checkpoint_dir: directory not found locally" in out
    assert "valid 'distill' config" in out
