"""PreferenceConfig.validate names each bad key; bundled configs validate (unpaired KTO data:
tune-data's tests/test_preference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tune.recipes
from tune.config import ConfigValidationError, ValidationContext, validate_config
from tune.recipes.config import load_config
from tune.recipes.preference import PreferenceConfig
from tune_testing import TinyAssets

CONFIG_DIR = Path(tune.recipes.__file__).parent / "configs" / "preference"
TINY = CONFIG_DIR / "tiny_cpu_dpo_lora.yaml"


def _local(assets: TinyAssets, data: Path, *extra: str) -> list[str]:
    return [f"model.checkpoint_dir={assets.checkpoint_dir}", f"data.source={data}", *extra]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pref_validation") / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    return path


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.loss.name=kto"], "data.format: training.loss.name=kto trains on unpaired"),
        (["data.format=unpaired"], "data.format: training.loss.name=dpo needs paired rows"),
        (["training.loss.beta=0"], "training.loss.beta: must be > 0, got 0.0"),
        (["training.loss.tau=-1"], "training.loss.tau: must be > 0, got -1.0"),
        (["training.loss.label_smoothing=0.5"], "training.loss.label_smoothing: must be in [0, 0.5)"),
        (["model.reference_checkpoint_dir=/tmp"], "model.reference_checkpoint_dir: only for training.method=full"),
        (
            ["training.method=full", "model.reference_checkpoint_dir=/no/such/ref"],
            "model.reference_checkpoint_dir: directory not found",
        ),
        (["training.lora.init=pissa"], "training.lora.init: pissa cannot be used with training.loss.name=dpo"),
        (["distributed.tp_size=2"], "distributed.tp_size: 2 does not divide the world size 1"),
        (["training.lr_schedule.warmup_steps=40"], "training.lr_schedule.warmup_steps: must be <"),
        (["data.source=./missing.jsonl"], "data.source: path not found locally: ./missing.jsonl"),
        (["data.validation_fraction=0"], "eval.every_n_steps: needs validation data"),
    ],
)  # fmt: skip
def test_bad_settings_name_their_key(
    overrides: list[str], expected: str, tiny_assets: TinyAssets, data_file: Path
) -> None:
    with pytest.raises(ConfigValidationError) as exc:
        load_config(TINY, PreferenceConfig, _local(tiny_assets, data_file, *overrides))
    errors = [str(i).removeprefix("error: ") for i in exc.value.issues if i.severity == "error"]
    assert any(e.startswith(expected) for e in errors), errors


def test_reference_dir_for_a_reference_free_loss_warns(
    tiny_assets: TinyAssets, data_file: Path
) -> None:
    cfg = load_config(
        TINY, PreferenceConfig,
        _local(tiny_assets, data_file, "training.method=full", "training.loss.name=simpo",
               f"model.reference_checkpoint_dir={tiny_assets.checkpoint_dir}"),
        validate=False,
    )  # fmt: skip
    warnings = validate_config(cfg, ValidationContext())
    assert [w.key for w in warnings] == ["model.reference_checkpoint_dir"]


BUNDLED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_config_validates(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.yaml", PreferenceConfig, validate=False)
    world = 8 if name.endswith("_8gpu") else 1
    warnings = validate_config(cfg, ValidationContext(world, missing_paths="warn"))
    assert {w.key for w in warnings} <= {"model.checkpoint_dir", "data.source"}


def test_bundled_set_covers_losses_and_methods() -> None:
    configs = [load_config(CONFIG_DIR / f"{n}.yaml", PreferenceConfig, validate=False)
               for n in BUNDLED]  # fmt: skip
    assert {c.training.method for c in configs} == {"full", "lora", "qlora"}
    assert {c.training.loss.name for c in configs} >= {"dpo", "simpo", "kto"}
