"""The loader's start-up line states the effective settings (``packing=off``, never ``None``)."""

from __future__ import annotations

import logging

import datasets
import pytest

from tune.data import StreamingLoader, TextBuilder


@pytest.mark.parametrize(
    ("packing", "shown"), [(None, "packing=off"), ("best_fit", "packing=best_fit")]
)
def test_start_line_names_the_packing_in_effect(
    packing: str | None, shown: str, chatml_tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    rows = datasets.Dataset.from_dict({"text": ["one two", "three four five"]})
    with caplog.at_level(logging.INFO, logger="tune.data.loader"):
        StreamingLoader(rows, TextBuilder(chatml_tokenizer), batch_size=2, max_seq_len=32,
                        packing=packing)  # fmt: skip
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data:")]
    assert shown in line
    assert "None" not in line
