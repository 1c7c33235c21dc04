"""``data.padding_free``: the sft and distill loops train on real tokens only, at the padded loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.data import padding_free as padding_free_module
from tune.data import remove_padding
from tune.recipes.cli import main
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, tiny_overrides

STEPS = 6


def _sft_metrics(assets: TinyAssets, out: Path, method: str, padding_free: bool) -> dict:
    overrides = tiny_overrides(
        assets, out, f"training.max_steps={STEPS}", "eval.every_n_steps=3",
        "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false",
        "data.packing=false", f"data.padding_free={str(padding_free).lower()}",
    )  # fmt: skip
    assert main(["run", "sft", "--config", f"sft/tiny_cpu_{method}", *overrides]) == 0
    return {key: read_jsonl_metrics(out / "metrics.jsonl", key) for key in ("loss", "val_loss")}


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
