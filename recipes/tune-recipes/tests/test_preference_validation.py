"""PreferenceConfig.validate names each bad key; bundled configs validate; unpaired rows are
checked; KTO batches carry their labels and mismatched completions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tune.recipes
from tune.data import DataSourceError, Tokenizer
from tune.recipes.config import (
    ConfigValidationError,
    ValidationContext,
    load_config,
    validate_config,
)
from tune.recipes.preference import PreferenceConfig
from tune.recipes.preference.unpaired import UnpairedBuilder, UnpairedLoader
from tune.recipes.testing.preference import unpaired_rows
from tune.recipes.testing.sft import TinyAssets

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
        (["distributed.tp_size=2"], "distributed.tp_size: the preference recipe shards with FSDP only"),
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


def test_unpaired_batches_carry_labels_and_mismatched_completions(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    import datasets

    rows = unpaired_rows(6)
    dataset = datasets.Dataset.from_list(rows)
    tokenizer = Tokenizer.from_dir(tiny_assets.checkpoint_dir)
    builder = UnpairedBuilder(tokenizer, None, dataset)
    loader = UnpairedLoader(dataset, builder, batch_size=3, max_seq_len=256, shuffle=False)
    batch = next(iter(loader))
    assert batch["tokens"].shape[0] == 6
    assert batch["desirable"].tolist() == [r["label"] for r in rows[:3]]
    for i in range(3):
        example = builder._tokenize(rows[i]["prompt"], rows[i]["completion"], "")
        kl_pair = builder._tokenize(rows[i]["prompt"], rows[i + 1]["completion"], "")
        n, m = len(example["tokens"]), len(kl_pair["tokens"])
        assert batch["tokens"][i, :n].tolist() == example["tokens"]
        assert batch["tokens"][3 + i, :m].tolist() == kl_pair["tokens"]


def test_unpaired_rows_are_checked(tiny_assets: TinyAssets) -> None:
    import datasets

    tokenizer = Tokenizer.from_dir(tiny_assets.checkpoint_dir)
    bad_label = datasets.Dataset.from_list([{"prompt": "p", "completion": "c", "label": "maybe"}])
    builder = UnpairedBuilder(tokenizer, None, bad_label)
    with pytest.raises(
        DataSourceError, match=r"example 0, column 'label': label must be a boolean"
    ):
        builder(bad_label[0], 0)
    no_label = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataSourceError, match=r"column\(s\) \['label'\] not found"):
        UnpairedBuilder(tokenizer, None, no_label)
    renamed = datasets.Dataset.from_list([{"q": "p", "completion": "c", "ok": True}])
    builder = UnpairedBuilder(tokenizer, None, renamed, {"prompt": "q", "label": "ok"})
    assert builder(renamed[0], 0)["desirable"] is True
