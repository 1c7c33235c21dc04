"""Meters: tokens/s and MFU from a controlled clock, the FLOP formula, peak memory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tune.train import (
    ThroughputMeter,
    count_batch_tokens,
    count_nonpadding_tokens,
    model_flops_utilization,
    transformer_flops_per_token,
)


def test_transformer_flops_per_token_by_hand() -> None:
    # 6 N + 12 L T D with N = 1e6, L = 2, T = 128, D = 64
    assert transformer_flops_per_token(1_000_000, 2, 128, 64) == 6e6 + 12 * 2 * 128 * 64
    assert (
        transformer_flops_per_token(1_000_000, 2, 128, 64, training=False) == 2e6 + 4 * 2 * 128 * 64
    )


def test_throughput_meter_with_a_fake_clock() -> None:
    times = iter([10.0, 12.5])
    meter = ThroughputMeter(flops_per_token=6e9, peak_flops=1e15, clock=lambda: next(times))
    meter.start()
    metrics = meter.stop(torch.tensor(5000))
    assert metrics["step_time_s"] == 2.5
    assert metrics["tokens_per_s"] == 2000.0
    assert metrics["mfu"] == pytest.approx(2000 * 6e9 / 1e15)  # 0.012
    assert metrics["peak_memory_gib"] > 0
    with pytest.raises(RuntimeError, match="before start"):
        meter.stop(1)


def test_nonpadding_tokens_and_mfu_arguments() -> None:
    tokens = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert count_nonpadding_tokens(tokens, mask) == 8
    assert count_nonpadding_tokens(tokens) == 10
    with pytest.raises(ValueError, match="must match tokens"):
        count_nonpadding_tokens(tokens, mask[:, :4])
    with pytest.raises(ValueError, match="peak_flops_per_second"):
        model_flops_utilization(1.0, 1.0, 0.0)


def test_packed_batch_counts_only_real_tokens() -> None:
    # Two packed rows of T=6: 4 and 5 real tokens, then tail padding (a document of its own).
    tokens = torch.ones(2, 6, dtype=torch.long)
    padding = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert count_nonpadding_tokens(tokens, padding_mask=padding) == 9
    batch = {"tokens": tokens, "document_ids": torch.zeros(2, 6), "padding_mask": padding}
    assert count_batch_tokens(batch) == 9
    assert count_batch_tokens({"tokens": tokens}) == 12  # padding-free rows: all real
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    assert count_batch_tokens({"tokens": tokens, "attention_mask": mask}) == 9
    assert count_nonpadding_tokens(tokens, mask, padding_mask=padding) == 7  # both apply
    with pytest.raises(ValueError, match="padding_mask"):
        count_nonpadding_tokens(tokens, padding_mask=padding[:, :4])
    with pytest.raises(ValueError, match="no 'tokens'"):
        count_batch_tokens({"padding_mask": padding})


PEAK_SCRIPT = """
import os
import torch
from tune.train import peak_memory_bytes
with open("/proc/self/statm") as f:
    resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = peak_memory_bytes()
block = torch.ones(256 * 2**20 // 4)  # 256 MiB, written
print(resident, before, peak_memory_bytes())
"""


def test_cpu_peak_memory_tracks_a_large_allocation() -> None:
    # A fresh process, so earlier peaks of the test session do not hide the allocation.
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    resident, before, after = map(int, out.stdout.split())
    block = 256 * 2**20
    assert before >= resident  # a peak is never below the current resident size
    assert after >= resident + 0.95 * block  # the allocation shows up in the peak
    assert after <= max(before, resident + block) + 64 * 2**20  # and nothing much else
