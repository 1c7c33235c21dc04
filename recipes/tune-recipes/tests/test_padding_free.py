"""``data.padding_free``: the sft and distill loops train on real tokens only, at the padded loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.data import collate_packed, collate_padded, concat_documents, remove_padding
from tune.data import padding_free as padding_free_module
from tune.recipes.cli import main
from tune.recipes.common.token_data import TokenData
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


@pytest.mark.parametrize("layout", ["packed", "padded", "padding_free"])
def test_throughput_counts_only_the_samples_tokens(layout: str) -> None:
    lengths = [5, 9, 3, 12, 7]
    samples = [{"tokens": [1] * n, "labels": [-100] * n} for n in lengths]
    if layout == "packed":  # two rows of 32: 5+9+3 and 12+7, the rest is tail padding
        batches = [collate_packed([concat_documents(samples[:3]), concat_documents(samples[3:])],
                                  32, pad_id=0)]  # fmt: skip
    else:  # two micro-batches, padded to a multiple of 8 (or laid flat)
        batches = [collate_padded(samples[:3], 0), collate_padded(samples[3:], 0)]
    data = TokenData(
        loader=batches, total_steps=1, has_validation=False, _val=None, _builder=None, _args={},
        _padding_free=layout == "padding_free", _device=torch.device("cpu"),
        _max_eval_batches=None,
    )  # fmt: skip
    mbs, tokens = data.next_micro_batches(len(batches))
    assert tokens == sum(lengths) == 36
    assert sum(mb["tokens"].numel() for mb in mbs) > 36 or layout == "padding_free"
