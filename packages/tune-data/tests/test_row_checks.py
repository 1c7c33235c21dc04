"""Up-front row checks: a bad row is named (example, column, message, role) before any batch."""

from __future__ import annotations

from typing import Any

import datasets
import pytest

from tune.data import (
    ChatBuilder,
    DataSourceError,
    InstructionBuilder,
    MessageError,
    PreferenceBuilder,
    PromptAnswerBuilder,
    StreamingLoader,
    TextBuilder,
    Tokenizer,
)
from tune.data.row_checks import iter_rows
from tune.data.synthetic import synthetic_instruction_rows


def _chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"say {i}"},
                      {"role": "assistant", "content": f"{i} {i}"}]}
        for i in range(n)
    ]  # fmt: skip


def _loader(rows: list[dict[str, Any]], builder: Any) -> StreamingLoader:
    return StreamingLoader(datasets.Dataset.from_list(rows), builder, batch_size=2, max_seq_len=64)


def test_iter_rows_reads_only_the_named_columns_in_order_across_batches() -> None:
    dataset = datasets.Dataset.from_dict({"a": list(range(10)), "b": list("abcdefghij")})
    dataset = dataset.with_format("numpy")  # the format is ignored: plain Python values
    rows = list(iter_rows(dataset, ["b", "missing"], batch_size=3))
    assert [i for i, _ in rows] == list(range(10))
    assert rows[7] == (7, {"b": "h"})
    subset = dataset.select([9, 2, 5])  # an indices mapping: positions are the subset's
    assert list(iter_rows(subset, ["a"], batch_size=2)) == [
        (0, {"a": 9}),
        (1, {"a": 2}),
        (2, {"a": 5}),
    ]


def test_a_column_missing_in_one_row_is_named_before_any_batch(chatml_tokenizer) -> None:
    rows = synthetic_instruction_rows(12)
    del rows[6]["output"]  # datasets fills it with None
    builder = InstructionBuilder(chatml_tokenizer)
    with pytest.raises(DataSourceError, match=r"example 6: column 'output' is missing or null"):
        _loader(rows, builder)
    with pytest.raises(DataSourceError, match=r"\['instruction', 'output'\] in every row"):
        builder({"instruction": "x", "output": None}, 6)  # and when called without validate
    renamed = [{"prompt": r["instruction"], "answer": r.get("output")} for r in rows]
    mapped = InstructionBuilder(
        chatml_tokenizer, columns={"instruction": "prompt", "output": "answer"}
    )
    with pytest.raises(DataSourceError, match=r"example 6: column 'answer' is missing"):
        _loader(renamed, mapped)


def test_an_empty_instruction_output_is_named(chatml_tokenizer) -> None:
    rows = synthetic_instruction_rows(8)
    rows[2]["output"] = "  \n"
    with pytest.raises(DataSourceError, match=r"example 2: column 'output' is empty"):
        _loader(rows, InstructionBuilder(chatml_tokenizer))


def test_an_unknown_role_is_named_with_the_allowed_ones_before_any_batch(chatml_tokenizer) -> None:
    rows = _chat_rows(16)
    rows[3]["messages"][0]["role"] = "wizard"
    with pytest.raises(MessageError) as info:
        _loader(rows, ChatBuilder(chatml_tokenizer))
    assert str(info.value) == (
        "example 3: message 0 has role 'wizard'; expected one of "
        "['system', 'user', 'assistant', 'tool']"
    )
    sharegpt = [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    ] * 4
    sharegpt[2] = {"conversations": [{"from": "robot", "value": "a"}]}
    with pytest.raises(
        MessageError, match=r"example 2: turn 0 has 'from'='robot'; expected one of"
    ):
        _loader(sharegpt, ChatBuilder(chatml_tokenizer, style="sharegpt"))


def test_an_empty_assistant_turn_is_named(chatml_tokenizer) -> None:
    rows = _chat_rows(8)
    rows[5]["messages"][1]["content"] = ""
    builder = ChatBuilder(chatml_tokenizer)
    with pytest.raises(MessageError, match=r"example 5: message 1 \(assistant\) is empty"):
        _loader(rows, builder)
    with pytest.raises(MessageError, match=r"example 9: message 1 \(assistant\) is empty"):
        builder({"messages": [{"role": "user", "content": "u"},
                              {"role": "assistant", "content": " "}]}, 9)  # fmt: skip


def test_empty_assistant_turns_that_train_nothing_are_allowed(chatml_tokenizer) -> None:
    context = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "trainable": False},
               {"role": "user", "content": "v"}, {"role": "assistant", "content": "w"}]  # fmt: skip
    calls = [{"role": "user", "content": "u"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}]  # fmt: skip
    builder = ChatBuilder(chatml_tokenizer)
    builder.validate(datasets.Dataset.from_dict({"messages": [context]}))
    builder.validate(datasets.Dataset.from_dict({"messages": [calls]}))


def test_a_trainable_key_filled_with_none_by_datasets_means_trainable(chatml_tokenizer) -> None:
    rows = _chat_rows(2)
    rows[0]["messages"].insert(1, {"role": "assistant", "content": "ctx", "trainable": False})
    rows[0]["messages"].insert(2, {"role": "user", "content": "again"})
    dataset = datasets.Dataset.from_list(rows)
    assert dataset[1]["messages"][1]["trainable"] is None  # datasets filled the key
    builder = ChatBuilder(chatml_tokenizer)
    sample = builder(dataset[1], 1)
    trained = [t for t in sample["labels"] if t != -100]
    assert chatml_tokenizer.decode(trained).startswith("1 1")


def test_null_required_columns_of_other_builders_are_named(chatml_tokenizer) -> None:
    pairs = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 3 + [{"prompt": "p", "chosen": "c"}]
    with pytest.raises(DataSourceError, match=r"example 3: column 'rejected' is missing or null"):
        _loader(pairs, PreferenceBuilder(chatml_tokenizer))
    prompts = [{"prompt": "p", "answer": "4"}, {"prompt": "q"}]
    with pytest.raises(DataSourceError, match=r"example 1: column 'answer' is missing or null"):
        _loader(prompts, PromptAnswerBuilder(chatml_tokenizer))
    with pytest.raises(DataSourceError, match=r"example 1: column 'answer'"):
        PromptAnswerBuilder(chatml_tokenizer)({"prompt": "q", "answer": None}, 1)
    texts = [{"text": "a b"}, {"title": "t"}]
    with pytest.raises(DataSourceError, match=r"example 1: column 'text' is missing or null"):
        _loader(texts, TextBuilder(chatml_tokenizer))


def test_validate_without_building_reads_rows_without_tokenizing(
    chatml_tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validate tokenized a row")

    monkeypatch.setattr(chatml_tokenizer, "encode", refuse)
    monkeypatch.setattr(chatml_tokenizer, "encode_with_offsets", refuse)
    chats = datasets.Dataset.from_list(_chat_rows(50))
    ChatBuilder(chatml_tokenizer).validate(chats, build_samples=False)
    rows = datasets.Dataset.from_list(synthetic_instruction_rows(50))
    InstructionBuilder(chatml_tokenizer).validate(rows, build_samples=False)
