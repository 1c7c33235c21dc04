"""Padding-free batches in a loop: when they are on (`resolve_padding_free`) and what a batch
becomes (`padding_free_batch`)."""

from __future__ import annotations

import logging

import pytest
import torch

from tune.data import padding_free_batch, padding_free_batches, resolve_padding_free

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_padding_free_batch_lays_the_real_tokens_end_to_end() -> None:
    batch = {
        "tokens": torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]]),
        "labels": torch.tensor([[5, 6, -100, -100], [8, -100, -100, -100]]),
        "positions": torch.arange(4).expand(2, 4),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
    }
    flat = padding_free_batch(batch, True)
    assert flat["tokens"].tolist() == [[4, 5, 6, 7, 8]]
    assert flat["labels"].tolist() == [[5, 6, -100, 8, -100]]
    assert flat["document_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert padding_free_batch(batch, False).keys() == batch.keys()
    packed = {"tokens": batch["tokens"], "document_ids": batch["positions"]}
    assert padding_free_batch(packed, True).keys() == packed.keys()  # packed: left alone
    both = list(padding_free_batches([batch, batch], True))
    assert [b["tokens"].shape for b in both] == [(1, 5), (1, 5)]


@pytest.mark.parametrize(
    ("setting", "device", "packing", "compile", "tp_size", "expected"),
    [
        (None, CPU, False, False, 1, True),  # auto: eager CPU training
        (None, CPU, False, True, 1, False),  # compiled: one graph per length
        (None, CPU, False, False, 2, False),  # sequence parallel splits the sequence
        (None, CUDA, False, False, 1, False),  # FlexAttention compiles per length
        (None, CPU, True, False, 1, False),  # packs have no padding
        (True, CPU, True, False, 1, False),
        (False, CPU, False, False, 1, False),
        (True, CUDA, False, False, 1, True),
    ],
)
def test_resolve_padding_free(
    setting: bool | None, device: torch.device, packing: bool, compile: bool, tp_size: int,
    expected: bool, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    with caplog.at_level(logging.INFO, logger="tune.data.padding_free"):
        got = resolve_padding_free(
            setting, device=device, packing=packing, compile=compile, tp_size=tp_size,
            key="perplexity.padding_free",
        )  # fmt: skip
    assert got is expected
    if setting and device.type == "cuda":
        assert "perplexity.padding_free=true on CUDA" in caplog.text
        assert "recompilations" in caplog.text
    if setting is None and not packing:
        assert f"perplexity.padding_free (auto): {'on' if expected else 'off'}" in caplog.text
