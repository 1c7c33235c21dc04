"""``data.padding_free``: the sft and distill loops train on real tokens only, at the padded loss."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tune.data import remove_padding
from tune.recipes.cli import main
from tune.recipes.common import padding_free as padding_free_module
from tune.recipes.common.padding_free import padding_free_batch, resolve_padding_free
from tune.recipes.testing.sft import TinyAssets, read_metrics, sft_overrides

STEPS = 6
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _sft_metrics(assets: TinyAssets, out: Path, method: str, padding_free: bool) -> dict:
    overrides = sft_overrides(
        assets, out, f"training.max_steps={STEPS}", "eval.every_n_steps=3",
        "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false",
        "data.packing=false", f"data.padding_free={str(padding_free).lower()}",
    )  # fmt: skip
    assert main(["run", "sft", "--config", f"sft/tiny_cpu_{method}", *overrides]) == 0
    return {key: read_metrics(out / "metrics.jsonl", key) for key in ("loss", "val_loss")}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_padding_free_losses_equal_padded_losses(
    method: str, tiny_assets: TinyAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[tuple[int, int]] = []  # (padded B*T, real R) of each batch laid flat

    def counting(batch: dict) -> dict:
        flat = remove_padding(batch)
        removed.append((batch["tokens"].numel(), flat["tokens"].numel()))
        return flat

    monkeypatch.setattr(padding_free_module, "remove_padding", counting)
    padded = _sft_metrics(tiny_assets, tmp_path / "padded", method, padding_free=False)
    assert removed == []
    flat = _sft_metrics(tiny_assets, tmp_path / "flat", method, padding_free=True)
    assert len(removed) >= STEPS  # every training micro-batch (and the validation batches)
    assert sum(r for _, r in removed) < sum(n for n, _ in removed)
    for key in ("loss", "val_loss"):
        assert sorted(flat[key]) == sorted(padded[key])
        assert flat[key]
        steps = sorted(padded[key])
        got, want = [flat[key][s] for s in steps], [padded[key][s] for s in steps]
        assert got == pytest.approx(want, rel=1e-5, abs=0), key


def test_padding_free_batch_lays_the_real_tokens_end_to_end() -> None:
    batch = {
        "tokens": torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]]),
        "labels": torch.tensor([[5, 6, -100, -100], [8, -100, -100, -100]]),
        "positions": torch.arange(4).expand(2, 4),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
    }
    flat = padding_free_batch(batch, True)
    assert flat["tokens"].tolist() == [[4, 5, 6, 7, 8]]
    assert flat["document_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert padding_free_batch(batch, False).keys() == batch.keys()
    packed = {"tokens": batch["tokens"], "document_ids": batch["positions"]}
    assert padding_free_batch(packed, True).keys() == packed.keys()  # packed: left alone


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
    with caplog.at_level(logging.INFO, logger="tune.recipes.common.padding_free"):
        got = resolve_padding_free(
            setting, device=device, packing=packing, compile=compile, tp_size=tp_size
        )
    assert got is expected
    if setting and device.type == "cuda":
        assert "recompilations" in caplog.text
