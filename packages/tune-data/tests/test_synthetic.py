"""The synthetic fixture is deterministic, its answers are right, and its tokenizer loads in HF."""

from __future__ import annotations

import re

from transformers import AutoTokenizer

from tune.data import Tokenizer
from tune.data.synthetic import save_tiny_tokenizer, synthetic_instruction_rows


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
