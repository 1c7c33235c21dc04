"""`tune run sft` with QLoRA on a tiny MoE: NF4 attention and NF4 stacked experts, adapters train."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from tune.train.loggers import read_jsonl_metrics
from tune_testing import TinyAssets, run_in_process, tiny_overrides

STEPS = 6


def test_qlora_on_moe_trains_adapters_over_nf4_experts(
    moe_assets: TinyAssets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "moe_qlora"
    overrides = tiny_overrides(
        moe_assets, out, "training.method=qlora", f"training.max_steps={STEPS}",
        "training.lr_schedule.warmup_steps=1", "training.optimizer.lr=3.0e-3",
        "eval.before_training=true", "eval.every_n_steps=null", "eval.max_batches=2",
        "checkpointing.save_every_n_steps=null", "checkpointing.save_merged=false",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="tune.quant"):
        summary = run_in_process("sft", "sft/tiny_cpu_moe_lora", overrides)
    # 2 layers x (gate_up_proj [8, 128, 128] + down_proj [8, 128, 64]) = 393,216 float32 params;
    # NF4: 4-bit codes 196,608 B + int8 block scales 6,144 + fp32 second-level factors 96 + per
    # stack a scale mean 4 and a 16-entry table 64 (x 4 stacks) = 203,120 B
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("NF4 experts")] == [
        "NF4 experts: 4 stacks, 393216 params, 0.517 bytes/param (was 1572864 bytes, now 203120)"
    ]
    assert "NF4: 8 modules" in " ".join(messages)  # attention; the routers stay in float
    losses = read_jsonl_metrics(out / "metrics.jsonl", "loss")
    val = read_jsonl_metrics(out / "metrics.jsonl", "val_loss")
    print(f"moe qlora: losses {[round(losses[s], 4) for s in sorted(losses)]}, val {val}")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    assert sorted(val) == [0, STEPS]
    assert val[STEPS] < val[0] - 0.05  # the adapters over the NF4 base learned
    adapter_dir = Path(summary["adapter_dir"])
    config = (adapter_dir / "adapter_config.json").read_text()
    assert '"experts.gate_up_proj"' in config
    assert '"experts.down_proj"' in config
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size > 0
