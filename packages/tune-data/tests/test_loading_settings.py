"""Data from plain (config) settings: a builder by format name, the train/validation split of a
source, a training or evaluation loader, and each rank's share of a batch count."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from tune.data import (
    IGNORE_INDEX,
    ChatBuilder,
    DataSourceError,
    InstructionBuilder,
    TextBuilder,
    Tokenizer,
    build_sample_builder,
    bundled_template,
    make_loader,
    per_rank_batches,
    split_source,
)
from tune.data.synthetic import synthetic_instruction_rows, write_jsonl


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    return write_jsonl(synthetic_instruction_rows(20), tmp_path / "rows.jsonl")


def _build(tokenizer: Tokenizer, data_format: str, **kw):
    settings = {"column_map": {}, "chat_template": None, "train_on_input": False, **kw}
    return build_sample_builder(tokenizer, data_format, **settings)


def test_builder_by_format_name_maps_columns_and_train_on(chatml_tokenizer: Tokenizer) -> None:
    row = {"question": "What is 2 + 2?", "reply": "4"}
    # {expected: dataset_column}, the direction of the builders' columns=
    builder = _build(
        chatml_tokenizer, "instruction", column_map={"instruction": "question", "output": "reply"}
    )
    assert isinstance(builder, InstructionBuilder)
    assert builder.columns["instruction"] == "question"
    assert builder.columns["output"] == "reply"
    reference = InstructionBuilder(
        chatml_tokenizer, None, columns={"instruction": "question", "output": "reply"}
    )
    assert builder(row, 0) == reference(row, 0)
    assert IGNORE_INDEX in builder(row, 0)["labels"]
    everything = _build(
        chatml_tokenizer, "instruction", column_map={"instruction": "question", "output": "reply"},
        train_on_input=True,
    )  # fmt: skip
    assert IGNORE_INDEX not in everything(row, 0)["labels"][:-1]
    assert isinstance(_build(chatml_tokenizer, "chat"), ChatBuilder)
    text = _build(chatml_tokenizer, "text", column_map={"text": "body"})
    assert isinstance(text, TextBuilder)
    assert text.columns == {"text": "body"}


def test_a_column_map_written_the_old_way_round_shows_the_flipped_map(
    chatml_tokenizer: Tokenizer,
) -> None:
    with pytest.raises(ValueError) as info:
        _build(
            chatml_tokenizer, "instruction", column_map={"question": "instruction", "output": "a"}
        )
    assert str(info.value) == (
        "data.column_map: ['question'] are dataset columns, not names the builder reads "
        "(instruction, input, output, system); the map is {expected name: dataset column}: "
        "write data.column_map={instruction: question, output: a}"
    )
    with pytest.raises(ValueError, match=r"^columns: unknown key\(s\) \['body'\]; the keys"):
        TextBuilder(chatml_tokenizer, columns={"body": "content"})


def test_a_missing_column_names_the_column_map_key_and_the_file(
    chatml_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    path = write_jsonl([{"q": "2 + 2?", "a": "4"}] * 3, tmp_path / "qa.jsonl")
    builder = _build(chatml_tokenizer, "instruction", column_map={"instruction": "q"})
    with pytest.raises(DataSourceError) as info:
        make_loader(
            str(path), builder, batch_size=1, max_seq_len=64, packing=False, truncation="drop",
            seed=0, shuffle=False, rank=0, world_size=1, endless=False,
        )  # fmt: skip
    assert str(info.value) == (
        f"InstructionBuilder: column(s) ['output'] not found in {path}; available columns: "
        "['q', 'a']. Map them with data.column_map={output: <dataset column>}"
    )


def test_builder_reads_a_template_file_and_names_a_bad_format(
    chatml_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    path = tmp_path / "my.jinja"
    path.write_text(bundled_template("chatml"), encoding="utf-8")
    builder = _build(chatml_tokenizer, "chat", chat_template=str(path))
    assert builder.template.source == bundled_template("chatml")
    with pytest.raises(ValueError, match=r"data.format 'csv': expected instruction, chat or text"):
        _build(chatml_tokenizer, "csv")
    with pytest.raises(ValueError, match=r"^perplexity.format 'tsv'"):
        _build(chatml_tokenizer, "tsv", key="perplexity.format")


def test_split_source_holds_out_a_seeded_fraction(rows_file: Path) -> None:
    seen: list[int] = []
    train, val = split_source(
        str(rows_file), "train", None, 0.25, 3, validate=lambda d: seen.append(len(d))
    )
    assert seen == [20]  # the whole source is checked before the split
    assert val is not None
    assert (len(train), len(val)) == (15, 5)
    prompts = [r["prompt"] for r in train] + [r["prompt"] for r in val]
    assert sorted(prompts) == sorted(r["prompt"] for r in synthetic_instruction_rows(20))
    _, val_again = split_source(str(rows_file), "train", None, 0.25, 3)
    assert val_again is not None
    assert val_again["prompt"] == val["prompt"]
    other_seed = split_source(str(rows_file), "train", None, 0.25, 4)[1]
    assert other_seed is not None
    assert other_seed["prompt"] != val["prompt"]
    whole, none = split_source(str(rows_file), "train", None, 0.0, 3, validate=seen.append)
    assert (len(whole), none, len(seen)) == (20, None, 1)  # no split, no extra check


def test_split_source_names_its_keys(rows_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^data.validation_split='test': a local file .* "
                       r"use data.validation_fraction"):  # fmt: skip
        split_source(str(rows_file), "train", "test", 0.0, 0)
    with pytest.raises(ValueError, match=r"^perplexity.validation_split='test'"):
        split_source(str(rows_file), "train", "test", 0.0, 0, key="perplexity.source")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(
        DataSourceError, match=rf"^eval.source={empty} \(split 'train'\) has 0 rows"
    ):
        split_source(str(empty), "train", None, 0.1, 0, key="eval.source")


def test_make_loader_trains_endlessly_and_evaluates_once(chatml_tokenizer: Tokenizer) -> None:
    dataset = datasets.Dataset.from_list(synthetic_instruction_rows(10))
    builder = InstructionBuilder(chatml_tokenizer)
    settings = {"max_seq_len": 256, "truncation": "truncate", "seed": 0, "rank": 0,
                "world_size": 1}  # fmt: skip
    once = list(make_loader(dataset, builder, batch_size=4, packing=False, shuffle=False,
                            endless=False, **settings))  # fmt: skip
    assert [b["tokens"].shape[0] for b in once] == [4, 4, 2]  # the short last batch is kept
    endless = make_loader(dataset, builder, batch_size=4, packing=False, shuffle=True,
                          endless=True, **settings)  # fmt: skip
    stream = iter(endless)
    assert all(next(stream)["tokens"].shape[0] == 4 for _ in range(8))  # 32 rows of 10: cycles
    packed = next(iter(make_loader(dataset, builder, batch_size=2, packing=True, shuffle=False,
                                   endless=False, **settings)))  # fmt: skip
    assert packed["tokens"].shape == (2, 256)
    assert "document_ids" in packed
    half = make_loader(dataset, builder, batch_size=1, packing=False, shuffle=False,
                       endless=False, **{**settings, "rank": 1, "world_size": 2})  # fmt: skip
    assert len(list(half)) == 5


@pytest.mark.parametrize(
    ("max_batches", "ranks", "expected"),
    [(None, 4, None), (8, 4, 2), (10, 4, 3), (10, 1, 10), (1, 8, 1)],
)
def test_per_rank_batches_rounds_up(
    max_batches: int | None, ranks: int, expected: int | None
) -> None:
    assert per_rank_batches(max_batches, ranks) == expected


def test_per_rank_batches_names_a_bad_rank_count() -> None:
    with pytest.raises(ValueError, match="data_parallel_size must be >= 1, got 0"):
        per_rank_batches(4, 0)
