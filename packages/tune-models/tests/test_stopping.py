"""Stop rules: EOS / stop-token ids, stop strings cut from the decoded text, tokens really used."""

from __future__ import annotations

import json
from pathlib import Path

from tune.models import (
    StopRules,
    build_stop_rules,
    checkpoint_eos_ids,
    finish_completion,
)

# A toy vocabulary: id -> text piece; 0 is EOS (decodes to nothing), 1 is "!".
PIECES = {0: "", 1: "!", 2: "hello", 3: " world", 4: ".", 5: " bye", 6: "hi", 7: "<|end|>", 8: " "}


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_finish_completion_applies_each_rule() -> None:
    rules = StopRules({0: "eos", 1: "stop_token"}, (". ",))
    done = finish_completion([2, 3, 4, 5, 0], decode, rules)  # "hello world. bye"
    assert (done.text, done.stop_reason) == ("hello world", "stop_string")
    assert done.num_tokens == 4  # ". " is complete only once " bye" came
    done = finish_completion([2, 0], decode, rules)
    assert (done.text, done.stop_reason, done.num_tokens) == ("hello", "eos", 2)
    done = finish_completion([6, 1], decode, rules)
    assert (done.text, done.stop_reason, done.num_tokens) == ("hi", "stop_token", 2)
    done = finish_completion([2, 3], decode, StopRules({}))
    assert (done.text, done.stop_reason, done.num_tokens) == ("hello world", "length", 2)
    # The first stop string in the text wins, whatever the order of the rules.
    done = finish_completion([2, 8, 6, 3], decode, StopRules({}, ("world", " hi")))
    assert (done.text, done.num_tokens) == ("hello", 3)


def test_build_stop_rules_reasons_and_precedence() -> None:
    vocab = {"<|end|>": 7, "!": 1}
    rules = build_stop_rules(
        eos_ids=[0, 1], stop_token_ids=[1, 5], stop_strings=["<|end|>", "\n\n"],
        token_to_id=vocab.get,
    )  # fmt: skip
    assert rules.token_reasons == {7: "stop_string", 1: "eos", 5: "stop_token", 0: "eos"}
    assert rules.token_ids == [0, 1, 5, 7]
    assert rules.strings == ("<|end|>", "\n\n")
    done = finish_completion([6, 7], decode, rules)  # the one-token stop string ends decoding
    assert (done.text, done.stop_reason) == ("hi", "stop_string")
    text_only = build_stop_rules(stop_strings=["<|end|>"])
    assert text_only.token_reasons == {}
    assert finish_completion([6, 7, 2], decode, text_only).text == "hi"


def test_checkpoint_eos_ids_reads_both_files(tmp_path: Path) -> None:
    assert checkpoint_eos_ids(tmp_path) == []
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 9, True]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2, "bos_token_id": 1}))
    assert checkpoint_eos_ids(tmp_path) == [5, 9, 2]
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert checkpoint_eos_ids(tmp_path) == [5, 9]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": None}))
    assert checkpoint_eos_ids(tmp_path) == [9]
