"""sft's data section: `data.column_map` is {expected: dataset_column}, errors name the config key,
ShareGPT chat rows, and `data.sources`, a weighted mixture of datasets."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tune.config import ConfigValidationError
from tune.data import DataSourceError, Tokenizer, read_jsonl
from tune.data.synthetic import write_jsonl
from tune.recipes.common.token_data import token_data
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.sft import SFTConfig
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, run_in_process, tiny_overrides

ONE_RANK = SimpleNamespace(rank=0, size=1)


@pytest.fixture(scope="module")
def files(tiny_assets: TinyAssets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny instruction rows with renamed columns, and 120 of them as ShareGPT chats."""
    root = tmp_path_factory.mktemp("sources")
    rows, _ = read_jsonl(tiny_assets.data_file)
    renamed = [{"question": r["instruction"], "context": r["input"], "reply": r["output"]}
               for r in rows]  # fmt: skip
    chats = [
        {"conversations": [{"from": "human", "value": f"{r['instruction']} {r['input']}"},
                           {"from": "gpt", "value": r["output"]}]}
        for r in rows[:120]
    ]  # fmt: skip
    return {"renamed": write_jsonl(renamed, root / "renamed.jsonl"),
            "sharegpt": write_jsonl(chats, root / "sharegpt.jsonl")}  # fmt: skip


def _config(assets: TinyAssets, out: Path, *extra: str) -> SFTConfig:
    path = find_config("sft/tiny_cpu_lora", "sft")[0]
    return load_config(path, SFTConfig, tiny_overrides(assets, out, *extra), recipe="sft")  # type: ignore[no-any-return]


def _errors(assets: TinyAssets, out: Path, *extra: str) -> list[str]:
    with pytest.raises(ConfigValidationError) as info:
        _config(assets, out, *extra)
    return [str(i) for i in info.value.issues if i.severity == "error"]


def test_column_map_is_expected_name_to_dataset_column(
    tiny_assets: TinyAssets, files: dict[str, Path], tmp_path: Path
) -> None:
    mapped = "data.column_map={instruction: question, input: context, output: reply}"
    cfg = _config(tiny_assets, tmp_path, f"data.source={files['renamed']}", mapped)
    tokenizer = Tokenizer.from_dir(tiny_assets.checkpoint_dir)
    data = token_data(cfg, tokenizer, ONE_RANK, torch.device("cpu"))
    reference = token_data(_config(tiny_assets, tmp_path), tokenizer, ONE_RANK, torch.device("cpu"))
    first, again = next(iter(data.loader)), next(iter(reference.loader))
    assert first["tokens"].tolist() == again["tokens"].tolist()  # the same rows, renamed columns


def test_a_column_map_written_the_old_way_round_is_one_line_with_the_flipped_map(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    errors = _errors(
        tiny_assets, tmp_path, "data.column_map={question: instruction, reply: output}"
    )
    assert errors == [
        "error: data.column_map: ['question', 'reply'] are dataset columns, not names the "
        "builder reads (instruction, input, output, system); the map is {expected name: dataset "
        "column}: write data.column_map={instruction: question, output: reply}"
    ]


def test_a_missing_column_names_data_column_map_and_the_file(
    tiny_assets: TinyAssets, files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(tiny_assets, tmp_path, f"data.source={files['renamed']}",
                  "data.column_map={instruction: question}")  # fmt: skip
    tokenizer = Tokenizer.from_dir(tiny_assets.checkpoint_dir)
    with pytest.raises(DataSourceError) as info:
        token_data(cfg, tokenizer, ONE_RANK, torch.device("cpu"))
    assert str(info.value) == (
        f"InstructionBuilder: column(s) ['output'] not found in {files['renamed']}; available "
        "columns: ['question', 'context', 'reply']. Map them with "
        "data.column_map={output: <dataset column>}"
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.sources=[{source: /x.jsonl}]"], "data.sources: set either data.source or"),
        (["data.source=null"], "data.source: must name a file or Hub dataset"),
        (
            ["data.source=null", "data.sources=[{source: /x.jsonl, weight: 0}]"],
            "data.sources.0.weight: must be > 0, got 0.0",
        ),
        (
            ["data.source=null", "data.sources=[{source: /x.jsonl, column_map: {q: instruction}}]"],
            "data.sources.0.column_map: ['q'] are dataset columns",
        ),
        (
            ["data.source=null", "data.sources=[{source: /x.jsonl}]", "data.validation_split=v",
             "data.validation_fraction=0"],
            "data.validation_split: with data.sources, set data.sources.N.validation_split",
        ),
    ],
)  # fmt: skip
def test_each_bad_sources_setting_names_its_key(
    tiny_assets: TinyAssets, tmp_path: Path, overrides: list[str], expected: str
) -> None:
    errors = _errors(tiny_assets, tmp_path, *overrides)
    assert any(e.startswith("error: " + expected) for e in errors), errors


def test_sft_trains_on_a_weighted_mixture_of_two_files(
    tiny_assets: TinyAssets, files: dict[str, Path], tmp_path: Path, caplog
) -> None:
    torch.set_num_threads(1)
    sources = (
        f"data.sources=[{{source: {tiny_assets.data_file}, weight: 1}}, "
        f"{{source: {files['sharegpt']}, weight: 3, format: chat}}]"
    )
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="tune.data.mixture"):
        summary = run_in_process("sft", "sft/tiny_cpu_lora", tiny_overrides(
            tiny_assets, out, "data.source=null", sources, "training.max_steps=3",
            "training.lr_schedule.warmup_steps=0", "eval.every_n_steps=null",
            "eval.before_training=false", "eval.max_batches=2",
            "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false",
        ))  # fmt: skip
    # 240 + 120 rows, 10% of each held out: 216 + 108 = 324 mixed 1:3
    assert f"mixture of 324 rows: 81 of data.sources.0={tiny_assets.data_file}" in caplog.text
    assert f"243 of data.sources.1={files['sharegpt']}" in caplog.text
    losses = read_jsonl_metrics(out / "metrics.jsonl")
    assert sorted(losses) == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in losses.values())
    assert math.isfinite(summary["val_loss"])
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert [s["weight"] for s in saved["sources"]] == [1.0, 3.0]
