"""`tune run sft` with ``distributed.cp_size=2`` on two gloo ranks: both ranks train zig-zag halves
of the same sequences (ring attention), so the losses, validation loss and the saved adapter equal
one process's. Runs padding-free rows (packed documents in one row, masked by document id) and
padded rows (right padding, dropped for plain causal attention)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from tune.dist.testing import run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, run_in_process, tiny_overrides, tune_command

STEPS = 3
TIMEOUT = 300


def _overrides(assets: TinyAssets, out: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        assets, out, f"training.max_steps={STEPS}", "training.lr_schedule.warmup_steps=1",
        "training.global_batch_size=4", "training.micro_batch_size=2",
        "eval.before_training=false", "eval.every_n_steps=3", "eval.max_batches=2",
        "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false", *extra,
    )  # fmt: skip


def _adapter(out: Path) -> dict:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.mark.distributed
@pytest.mark.parametrize(
    "padding_free", ["true", "false", pytest.param("packed", marks=pytest.mark.slow)]
)
def test_cp2_equals_one_process(tiny_assets: TinyAssets, tmp_path: Path, padding_free: str) -> None:
    one, two = tmp_path / "nproc1", tmp_path / "cp2"
    rows = f"data.padding_free={padding_free}" if padding_free != "packed" else "data.packing=true"
    run_in_process("sft", "sft/tiny_cpu_lora", _overrides(tiny_assets, one, rows))
    cp = ["distributed.cp_size=2", "distributed.backend=gloo", rows]
    run_to_end(tune_command("sft", "sft/tiny_cpu_lora", _overrides(tiny_assets, two, *cp),
                            nproc=2), TIMEOUT)  # fmt: skip
    for key in ("loss", "val_loss"):
        got, want = (read_jsonl_metrics(run / "metrics.jsonl", key) for run in (two, one))
        assert sorted(got) == sorted(want)
        assert got
        assert got == pytest.approx(want, abs=1e-5), key
    got, want = _adapter(two), _adapter(one)
    assert got.keys() == want.keys()
    err = max((got[k] - want[k]).abs().max().item() for k in want)
    # Adam divides by the root of tiny second moments, so float32 reduction-order noise (ring
    # blocks merged by log-sum-exp instead of one softmax) reaches ~1e-5 on factors of ~0.1;
    # training the wrong tokens or documents moves them by ~1e-3.
    assert err <= 2e-5
    print(f"cp=2 vs one process ({rows}): adapter {err:.1e}")
