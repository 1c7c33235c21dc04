"""Sources and builders: file formats, column mapping, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from tune.data import (
    ChatBuilder,
    DataSourceError,
    InstructionBuilder,
    MessageError,
    PreferenceBuilder,
    PromptAnswerBuilder,
    SampleTooLongError,
    StreamingLoader,
    Tokenizer,
    load_source,
    resolve_template,
    tokenize_messages,
)
from tune.data.synthetic import synthetic_instruction_rows, synthetic_preference_rows, write_jsonl


def test_malformed_jsonl_row_names_file_and_line(tmp_path: Path, chatml_tokenizer) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n[1, 2]\n'
    )
    with pytest.raises(DataSourceError, match=rf"{path}:3: malformed JSON row"):
        load_source(path)
    with pytest.raises(
        DataSourceError, match=rf"{path}:4: malformed JSON row \(expected a JSON object"
    ):
        load_source(path, max_bad_rows=1)
    dataset, skipped = load_source(path, max_bad_rows=2)
    assert (len(dataset), skipped) == (1, 2)
    loader = StreamingLoader(
        path, InstructionBuilder(chatml_tokenizer), batch_size=1, max_seq_len=64, max_bad_rows=2
    )
    assert loader.stats.skipped_malformed == 2


def test_local_formats_and_column_mapping(tmp_path: Path, chatml_tokenizer) -> None:
    rows = [
        {"q": r["instruction"], "ctx": r["input"], "a": r["output"]}
        for r in synthetic_instruction_rows(20)
    ]
    write_jsonl(rows, tmp_path / "d.jsonl")
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "d.csv"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    builder = InstructionBuilder(
        chatml_tokenizer, columns={"instruction": "q", "input": "ctx", "output": "a"}
    )
    expected = None
    for name in ("d.jsonl", "d.csv", "d.parquet", "d.json"):
        dataset, _ = load_source(tmp_path / name)
        builder.validate(dataset)
        samples = [builder(dataset[i], i) for i in range(len(dataset))]
        expected = expected or samples
        assert samples == expected, name
    first = rows[0]
    prompt = f"{first['q']}\n\n{first['ctx']}" if first["ctx"] else first["q"]
    chat = resolve_template(chatml_tokenizer, None)
    assert expected[0] == tokenize_messages(
        chatml_tokenizer,
        chat,
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": first["a"]}],
    )


def test_missing_column_names_it_and_the_available_ones(chatml_tokenizer) -> None:
    dataset = datasets.Dataset.from_dict({"prompt": ["x"], "response": ["y"]})
    with pytest.raises(
        DataSourceError,
        match=r"column\(s\) \['instruction', 'output'\] not found; available columns: \['prompt', 'response'\]",
    ):
        StreamingLoader(dataset, InstructionBuilder(chatml_tokenizer), batch_size=1, max_seq_len=32)


def test_empty_dataset_and_empty_after_filtering_explain_why(chatml_tokenizer) -> None:
    empty = datasets.Dataset.from_dict({"instruction": [], "output": []})
    with pytest.raises(DataSourceError, match="0 rows"):
        StreamingLoader(empty, InstructionBuilder(chatml_tokenizer), batch_size=1, max_seq_len=32)
    rows = datasets.Dataset.from_list(synthetic_instruction_rows(30))
    builder = InstructionBuilder(chatml_tokenizer)
    loader = StreamingLoader(
        rows, builder, batch_size=1, max_seq_len=32, filter_fn=lambda r: "zzz" in r["instruction"]
    )
    with pytest.raises(DataSourceError, match=r"no usable samples.*dropped_by_filter=30"):
        next(iter(loader))
    loader = StreamingLoader(rows, builder, batch_size=1, max_seq_len=4, truncation="drop")
    with pytest.raises(DataSourceError, match=r"no usable samples.*dropped_too_long=30"):
        next(iter(loader))


def test_truncation_policies_and_counts(chatml_tokenizer) -> None:
    rows = datasets.Dataset.from_list(synthetic_instruction_rows(60))
    builder = InstructionBuilder(chatml_tokenizer)
    lengths = [len(builder(rows[i], i)["tokens"]) for i in range(len(rows))]
    limit = sorted(lengths)[30]
    prompt_lengths = []
    for i in range(len(rows)):
        rendered = builder.template.render(
            builder.messages(rows[i])[:1], add_generation_prompt=True
        )
        prompt_lengths.append(len(chatml_tokenizer.encode(rendered.text)))
    over = sum(n > limit for n in lengths)
    no_label = sum(n > limit and p >= limit for n, p in zip(lengths, prompt_lengths, strict=True))
    for policy, kept in (("truncate", 60 - no_label), ("drop", 60 - over)):
        loader = StreamingLoader(
            rows, builder, batch_size=1, max_seq_len=limit, truncation=policy, drop_last=False
        )
        batches = list(loader)
        assert len(batches) == kept == loader.stats.kept
        assert all(b["tokens"].shape[1] <= -(-limit // 8) * 8 for b in batches)
        if policy == "truncate":
            assert (loader.stats.truncated, loader.stats.dropped_no_labels) == (
                over - no_label,
                no_label,
            )
        else:
            assert loader.stats.dropped_too_long == over
    loader = StreamingLoader(
        rows, builder, batch_size=60, max_seq_len=limit, truncation="error", shuffle=False
    )
    with pytest.raises(SampleTooLongError, match=rf"example \d+: \d+ tokens > max_seq_len={limit}"):
        next(iter(loader))


def test_sharegpt_equals_openai_messages(chatml_tokenizer) -> None:
    openai = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    sharegpt = [
        {"from": "system", "value": "s"},
        {"from": "human", "value": "u"},
        {"from": "gpt", "value": "a"},
    ]
    a = ChatBuilder(chatml_tokenizer)({"messages": openai}, 0)
    b = ChatBuilder(chatml_tokenizer, style="sharegpt")({"conversations": sharegpt}, 0)
    assert a == b
    with pytest.raises(MessageError, match=r"example 5: turn 0 has 'from'='robot'"):
        ChatBuilder(chatml_tokenizer, style="sharegpt")(
            {"conversations": [{"from": "robot", "value": "x"}]}, 5
        )


def test_chat_loader_reports_the_example_with_a_bad_role_order(tokenizer_dir) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("gemma"))
    rows = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                                    [{"role": "assistant", "content": "b"}]]})  # fmt: skip
    with pytest.raises(
        MessageError, match=r"example 1: the chat template cannot render roles \['assistant'\]"
    ):  # found by validate, before the first batch
        StreamingLoader(rows, ChatBuilder(tok), batch_size=2, max_seq_len=64, shuffle=False)


def test_preference_batches_stack_chosen_then_rejected(chatml_tokenizer) -> None:
    rows = datasets.Dataset.from_list(synthetic_preference_rows(8))
    loader = StreamingLoader(
        rows, PreferenceBuilder(chatml_tokenizer), batch_size=4, max_seq_len=128, shuffle=False
    )
    batch = next(iter(loader))
    assert batch["tokens"].shape[0] == 8
    assert batch["tokens"].shape[1] % 8 == 0
    chat = resolve_template(chatml_tokenizer, None)
    for i in range(4):
        row = rows[i]
        for offset, side in ((0, "chosen"), (4, "rejected")):
            ref = tokenize_messages(
                chatml_tokenizer,
                chat,
                [
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row[side]},
                ],
            )
            n = len(ref["tokens"])
            assert batch["tokens"][i + offset, :n].tolist() == ref["tokens"]
            assert batch["labels"][i + offset, :n].tolist() == ref["labels"]
            assert batch["attention_mask"][i + offset].sum().item() == n


def test_prompt_answer_batches_are_left_padded_generation_prompts(chatml_tokenizer) -> None:
    rows = datasets.Dataset.from_list(synthetic_instruction_rows(6))
    loader = StreamingLoader(
        rows, PromptAnswerBuilder(chatml_tokenizer), batch_size=3, max_seq_len=128, shuffle=False
    )
    batch = next(iter(loader))
    assert batch["answers"] == [rows[i]["answer"] for i in range(3)]
    for i in range(3):
        text = f"<|im_start|>user\n{rows[i]['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        ids = chatml_tokenizer.encode(text)
        n = len(ids)
        assert batch["tokens"][i, -n:].tolist() == ids
        assert batch["attention_mask"][i].tolist() == [0] * (batch["tokens"].shape[1] - n) + [1] * n
        assert batch["positions"][i, -n:].tolist() == list(range(n))
