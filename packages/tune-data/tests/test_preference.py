"""Unpaired (KTO) data: each example plus its prompt with the next row's completion, batched with
its `desirable` flags; bad rows and columns are named."""

from __future__ import annotations

import datasets
import pytest

from tune.data import (
    DataSourceError,
    StreamingLoader,
    Tokenizer,
    UnpairedBuilder,
    collate_preference,
)
from tune.data.synthetic import synthetic_unpaired_rows


def test_unpaired_batches_carry_labels_and_mismatched_completions(
    chatml_tokenizer: Tokenizer,
) -> None:
    rows = synthetic_unpaired_rows(6)
    dataset = datasets.Dataset.from_list(rows)
    builder = UnpairedBuilder(chatml_tokenizer, None, dataset)
    loader = StreamingLoader(dataset, builder, batch_size=3, max_seq_len=256, shuffle=False)
    batch = next(iter(loader))
    assert batch["tokens"].shape[0] == 6
    assert batch["desirable"].tolist() == [r["label"] for r in rows[:3]]
    for i in range(3):
        example = builder._tokenize(rows[i]["prompt"], rows[i]["completion"], "")
        kl_pair = builder._tokenize(rows[i]["prompt"], rows[i + 1]["completion"], "")
        n, m = len(example["tokens"]), len(kl_pair["tokens"])
        assert batch["tokens"][i, :n].tolist() == example["tokens"]
        assert batch["tokens"][3 + i, :m].tolist() == kl_pair["tokens"]
    last = builder(rows[5], 5)  # the last row borrows the first row's completion
    assert (
        last["rejected_tokens"]
        == builder._tokenize(rows[5]["prompt"], rows[0]["completion"], "")["tokens"]
    )


def test_unpaired_rows_are_checked(chatml_tokenizer: Tokenizer) -> None:
    bad_label = datasets.Dataset.from_list([{"prompt": "p", "completion": "c", "label": "maybe"}])
    builder = UnpairedBuilder(chatml_tokenizer, None, bad_label)
    with pytest.raises(
        DataSourceError, match=r"example 0, column 'label': label must be a boolean"
    ):
        builder(bad_label[0], 0)
    no_label = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataSourceError, match=r"column\(s\) \['label'\] not found"):
        UnpairedBuilder(chatml_tokenizer, None, no_label)
    with pytest.raises(
        ValueError, match=r"\['answer'\] are dataset columns.*columns=\{completion: answer\}"
    ):
        UnpairedBuilder(chatml_tokenizer, None, bad_label, {"answer": "completion"})
    with pytest.raises(ValueError, match=r"columns: unknown key\(s\) \['answer'\]"):
        UnpairedBuilder(chatml_tokenizer, None, bad_label, {"answer": "reply"})
    renamed = datasets.Dataset.from_list([{"q": "p", "completion": "c", "ok": "False"}])
    builder = UnpairedBuilder(chatml_tokenizer, None, renamed, {"prompt": "q", "label": "ok"})
    assert builder(renamed[0], 0)["desirable"] is False


def test_collate_preference_refuses_a_mix_of_paired_and_unpaired_samples() -> None:
    pair = {"chosen_tokens": [1, 2], "chosen_labels": [2, 3], "rejected_tokens": [1],
            "rejected_labels": [4]}  # fmt: skip
    assert "desirable" not in collate_preference([pair, pair], pad_id=0)
    flagged = collate_preference([{**pair, "desirable": 1}, {**pair, "desirable": False}], pad_id=0)
    assert flagged["desirable"].tolist() == [True, False]
    with pytest.raises(ValueError, match=r"sample 1 of the batch has no 'desirable' flag"):
        collate_preference([{**pair, "desirable": True}, pair], pad_id=0)
