"""The synthetic fixtures are deterministic, their answers are right, and the tokenizer loads in HF."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoTokenizer

from tune.data import Tokenizer
from tune.data.synthetic import (
    arithmetic_rows,
    save_tiny_tokenizer,
    synthetic_instruction_rows,
    synthetic_preference_rows,
    synthetic_unpaired_rows,
    write_arithmetic_task,
    write_preference_data,
)


def _check(row: dict[str, str]) -> bool:
    text, data, out = row["instruction"], row["input"], row["output"]
    if m := re.fullmatch(r"What is (\d+) \+ (\d+)\?", text):
        return int(out) == int(m[1]) + int(m[2])
    if m := re.fullmatch(r"Multiply (\d+) by (\d+)\.", text):
        return int(out) == int(m[1]) * int(m[2])
    if text.startswith("Subtract"):
        a, b = map(int, data.split(" and "))
        return int(out) == a - b
    if text.startswith("Reverse"):
        return out == data[::-1]
    if text.startswith("Convert"):
        return out == data.upper()
    if text.startswith("Sort"):
        return [int(x) for x in out.split(", ")] == sorted(int(x) for x in data.split(", "))
    if m := re.fullmatch(r"How many letters are in the word '(\w+)'\?", text):
        return int(out) == len(m[1])
    return False


def test_instruction_fixture_is_deterministic_and_verifiable() -> None:
    rows = synthetic_instruction_rows()
    assert len(rows) == 2000
    assert rows == synthetic_instruction_rows()
    assert rows != synthetic_instruction_rows(seed=1)
    assert all(_check(row) for row in rows)
    assert all(row["answer"] == row["output"] for row in rows)
    assert len({row["instruction"].split()[0] for row in rows}) == 7


def test_tiny_tokenizer_dir_loads_in_both(tmp_path) -> None:
    path = save_tiny_tokenizer(tmp_path, "llama3", vocab_size=400)
    ours, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    assert ours.vocab_size == len(ref) <= 400
    text = synthetic_instruction_rows(1)[0]["instruction"]
    assert ours.encode(text, add_bos=False) == ref.encode(text, add_special_tokens=False)
    assert ours.chat_template == ref.chat_template


def _operands(prompt: str) -> tuple[int, int]:
    a, b = (int(w) for w in prompt.replace(".", " ").split() if w.isdigit())
    return a, b


def test_arithmetic_task_is_deterministic_and_verifiable(tmp_path) -> None:
    rows = arithmetic_rows(300, seed=3)
    assert rows == arithmetic_rows(300, seed=3) != arithmetic_rows(300, seed=4)
    for row in rows:
        a, b = _operands(row["prompt"])
        answer = int(row["answer"])
        assert answer == (a + b if "more" in row["prompt"] else a - b)
        assert 0 <= answer <= 9
        assert row["messages"][1]["content"] == f"Answer: {row['answer']}"
    path = write_arithmetic_task(tmp_path / "task" / "train.jsonl", 5, seed=3)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:5]


def test_arithmetic_teacher_mistakes_change_only_subtraction_demonstrations() -> None:
    rows = arithmetic_rows(200, seed=1, teacher_mistakes=1.0, max_total=20, max_change=5)
    for row in rows:
        a, b = _operands(row["prompt"])
        assert int(row["answer"]) == (a + b if "more" in row["prompt"] else a - b) <= 20
        assert row["messages"][1]["content"] == f"Answer: {a + b}"  # always adds
    with pytest.raises(ValueError, match="num_rows must be > 0, got 0"):
        arithmetic_rows(0)
    with pytest.raises(ValueError, match="max_change=5, max_total=3"):
        arithmetic_rows(1, max_total=3, max_change=5)


def test_unpaired_rows_split_each_pair_and_files_hold_both_formats(tmp_path) -> None:
    pairs = synthetic_preference_rows(3, seed=2)
    rows = synthetic_unpaired_rows(5, seed=2)
    assert len(rows) == 5
    for i, row in enumerate(rows):
        pair = pairs[i // 2]
        assert row["prompt"] == pair["prompt"]
        assert row["label"] is (i % 2 == 0)
        assert row["completion"] == pair["chosen" if row["label"] else "rejected"]
    files = write_preference_data(tmp_path / "prefs", num_rows=4, seed=2)
    assert sorted(files) == ["paired", "unpaired"]
    read = {k: [json.loads(x) for x in p.read_text().splitlines()] for k, p in files.items()}
    assert read == {"paired": synthetic_preference_rows(4, 2), "unpaired": rows[:4]}
