"""What a config needs that this machine lacks is one line from `tune validate` and from `tune run`,
before any model loads: a missing optional package (found with find_spec, never imported) names
the key and the pip install; a Hub dataset offline and not cached names the key and the reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

import tune.recipes
from tune.recipes.cli import main
from tune.recipes.recipe import Recipe

TENSORBOARD = (
    "logging.loggers: the tensorboard logger needs the tensorboard package, which is not "
    "installed: pip install 'tune-train[tensorboard]'"
)
MISSING_PACKAGES = [
    ("tensorboard", "sft", ["logging.loggers=[stdout,tensorboard]"], TENSORBOARD),
    (
        "wandb", "sft", ["logging.loggers=[wandb]"],
        "logging.loggers: the wandb logger needs the wandb package, which is not installed: "
        "pip install 'tune-train[wandb]'",
    ),
    (
        "mlflow", "preference", ["logging.loggers=[mlflow]"],
        "logging.loggers: the mlflow logger needs the mlflow package, which is not installed: "
        "pip install 'tune-train[mlflow]'",
    ),
    (
        "lm_eval", "eval", ["lm_eval.tasks=[hellaswag]"],
        "lm_eval.tasks: the lm-evaluation-harness needs the lm_eval package, which is not "
        "installed: pip install 'tune-recipes[eval]'",
    ),
    (
        "torchao", "sft", ["training.method=full", "qat.scheme=int8_dynamic_int4_weight"],
        "qat.scheme: quantization-aware training needs the torchao package, which is not "
        "installed: pip install 'torchao'",
    ),
    (
        "gguf", "sft", ["checkpointing.save_gguf=[q8_0]"],
        "checkpointing.save_gguf: GGUF export needs the gguf package, which is not installed: "
        "pip install 'tune-checkpoint[gguf]'",
    ),
]  # fmt: skip
HUB_ID = "yahma/alpaca-cleaned"
CONFIGS = Path(tune.recipes.__file__).parent / "configs"


@pytest.fixture
def config_file(sft_dirs: dict[str, Path]):  # type: ignore[no-untyped-def]
    """``config_file(recipe)``: a bundled tiny config of the recipe as a user file, its input
    paths real (conftest's stand-in checkpoint and data)."""
    root, ckpt = sft_dirs["root"], sft_dirs["checkpoint"]
    pairs = root / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    sources = {"sft": sft_dirs["data"], "preference": pairs, "eval": sft_dirs["data"]}
    bundled = {"sft": "sft/tiny_cpu_lora", "preference": "preference/tiny_cpu_dpo_lora",
               "eval": "eval/tiny_cpu_eval"}  # fmt: skip

    def write(recipe: str) -> Path:
        tree = yaml.safe_load((CONFIGS / f"{bundled[recipe]}.yaml").read_text())
        tree["model"]["checkpoint_dir"] = str(ckpt)
        tree["data" if recipe != "eval" else "perplexity"]["source"] = str(sources[recipe])
        if "checkpointing" in tree:
            tree["checkpointing"]["output_dir"] = str(root / f"out_{recipe}")
        path = root / f"{recipe}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    return write


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tune run` must stop before the recipe (and its model loading) starts."""

    def load_run(self: Recipe) -> None:
        raise AssertionError(
            f"recipe {self.name!r} started although its config needs what is missing"
        )

    monkeypatch.setattr(Recipe, "load_run", load_run)


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        if name == module or name.startswith(f"{module}."):
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    ("module", "recipe", "overrides", "line"),
    MISSING_PACKAGES,
    ids=[m[0] for m in MISSING_PACKAGES],
)
def test_a_missing_optional_package_is_one_line_before_anything_loads(
    module: str,
    recipe: str,
    overrides: list[str],
    line: str,
    config_file,  # type: ignore[no-untyped-def]
    no_model_load: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = config_file(recipe)
    _hide(monkeypatch, module)
    assert main(["validate", str(path), *overrides]) == 2
    expected = f"{path}: 1 invalid setting(s): {line}\n"
    assert capsys.readouterr().err == f"tune validate: error: {expected}"
    assert main(["run", recipe, "--config", str(path), *overrides]) == 2
    assert capsys.readouterr().err == f"tune run: error: {expected}"


def test_an_installed_package_passes_its_lookup(
    config_file,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    looked_up: list[str] = []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, package=None: looked_up.append(name) or real(name)
    )
    assert main(["validate", str(config_file("sft")), "checkpointing.save_gguf=[q8_0]"]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    assert "gguf" in looked_up


def _offline_hub(monkeypatch: pytest.MonkeyPatch, home: Path, **env: str) -> None:
    monkeypatch.setenv("HF_HOME", str(home))  # an empty cache
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE",
                 "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_a_hub_dataset_offline_and_not_cached_is_one_line(
    switch: str,
    config_file,  # type: ignore[no-untyped-def]
    no_model_load: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _offline_hub(monkeypatch, tmp_path / "hf", **{switch: "1"})
    path = config_file("sft")
    override = f"data.source={HUB_ID}"
    expected = (
        f"{path}: 1 invalid setting(s): data.source: '{HUB_ID}' is not a local file and the "
        f"Hugging Face Hub is unreachable (offline: {switch}=1); it is not in the local Hugging "
        "Face cache either: fetch it once with a connection, or set data.source to a local file\n"
    )
    assert main(["validate", str(path), override]) == 2
    assert capsys.readouterr().err == f"tune validate: error: {expected}"
    assert main(["run", "sft", "--config", str(path), override]) == 2
    assert capsys.readouterr().err == f"tune run: error: {expected}"
    # The same for eval's perplexity.source; a bundled template only warns.
    assert main(["validate", str(config_file("eval")), f"perplexity.source={HUB_ID}"]) == 2
    assert "perplexity.source: 'yahma/alpaca-cleaned' is not a local file and the Hugging Face " \
        "Hub is unreachable" in capsys.readouterr().err  # fmt: skip
    assert main(["validate", "sft/llama3_1_8b_lora"]) == 0
    assert f"warning: data.source: '{HUB_ID}' is not a local file" in capsys.readouterr().out


def test_no_connection_is_named_and_a_cached_dataset_needs_none(
    config_file,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "hf"
    _offline_hub(monkeypatch, home, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there
    path = config_file("sft")
    assert main(["validate", str(path), f"data.source={HUB_ID}"]) == 2
    assert (
        f"data.source: '{HUB_ID}' is not a local file and the Hugging Face Hub is unreachable "
        "(no connection to http://127.0.0.1:9: "
    ) in capsys.readouterr().err
    # Downloaded before (huggingface_hub's cache, or a dataset `datasets` prepared): no error.
    (home / "hub" / "datasets--yahma--alpaca-cleaned" / "snapshots" / "abc").mkdir(parents=True)
    assert main(["validate", str(path), f"data.source={HUB_ID}"]) == 0
    (home / "datasets" / "tatsu-lab___alpaca" / "default").mkdir(parents=True)
    assert main(["validate", str(path), "data.source=tatsu-lab/alpaca"]) == 0
    # Not a path and not a Hub id either.
    assert main(["validate", str(path), "data.source=no such file"]) == 2
    assert "data.source: 'no such file' is not a local file and not a Hugging Face Hub id " \
        "(owner/name)" in capsys.readouterr().err  # fmt: skip


def test_offline_switches_follow_huggingface_hub_and_datasets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tune.recipes.common import availability

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert availability.offline_setting() is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert availability.offline_setting("model") == "HF_HUB_OFFLINE=yes"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # set: it decides for datasets, as in datasets
    assert availability.offline_setting("dataset") is None
    assert availability.offline_setting("model") == "HF_HUB_OFFLINE=yes"
