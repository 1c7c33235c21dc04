"""A 32k-token sequence trains on the CPU with memory linear in its length (tune.models +
tune.dist activation checkpointing + tune.train's chunked cross-entropy).

Peak bytes of one AdamW step (tune_testing.memory: persistent tensors plus the CPU allocator's
peak) at doubling lengths; the bytes per added token between consecutive lengths must agree
within 15%. Causal SDPA without a mask runs the CPU flash kernel (O(T) memory); the negative
controls show the criterion catches O(T^2) attention: the math kernel, and a dense [B, 1, T, T]
mask (what the model builds when given ``attention_mask``), both fail it by a wide margin.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tune_testing.long_sequence import LongSequenceRun, linearity_spread, markov_batch

pytestmark = pytest.mark.integration

SPREAD = 1.15  # largest / smallest bytes per added token


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _peaks(lengths: list[int], chunk_size: int = 1024, dense_mask: bool = False) -> list[int]:
    peaks = []
    for seq_len in lengths:
        run = LongSequenceRun.build(checkpointing=True, chunked=True, chunk_size=chunk_size)
        batch = markov_batch(seq_len, seed=1)
        if dense_mask:
            batch["attention_mask"] = torch.ones_like(batch["tokens"])
        peaks.append(run.peak_bytes(batch))
    return peaks


def test_peak_memory_linear_short() -> None:
    """1k / 2k / 4k tokens (a 256-token loss chunk keeps the constant part below the
    activations at 1k)."""
    lengths = [1024, 2048, 4096]
    peaks = _peaks(lengths, chunk_size=256)
    spread = linearity_spread(lengths, peaks)
    assert spread <= SPREAD, (peaks, spread)


@pytest.mark.slow
@pytest.mark.parametrize("quadratic", ["math_kernel", "dense_mask"])
def test_linearity_criterion_catches_quadratic_attention(quadratic: str) -> None:
    """The short test's criterion fails when attention memory grows as T^2."""
    lengths = [1024, 2048, 4096]
    math_only = sdpa_kernel([SDPBackend.MATH]) if quadratic == "math_kernel" else None
    with math_only or contextlib.nullcontext():
        peaks = _peaks(lengths, chunk_size=256, dense_mask=quadratic == "dense_mask")
    spread = linearity_spread(lengths, peaks)
    assert spread > 1.5, (peaks, spread)


@pytest.mark.slow
def test_32k_sequence_trains_with_linear_memory() -> None:
    """4k-32k: linear peak; at 32k the first step's loss is finite and 5 steps lower the loss
    of the trained sequence and of a held-out one."""
    lengths = [4096, 8192, 16384]
    peaks = _peaks(lengths)
    run = LongSequenceRun.build(checkpointing=True, chunked=True)
    batch, held_out = markov_batch(32768, seed=1), markov_batch(32768, seed=2)
    held_before = run.eval_loss(held_out)
    before = run.step(batch)  # the loss before the first update
    assert math.isfinite(before), before
    peaks.append(run.peak_bytes(batch))  # the second step
    for _ in range(3):
        run.step(batch)
    spread = linearity_spread([*lengths, 32768], peaks)
    assert spread <= SPREAD, (peaks, spread)
    after, held_after = run.eval_loss(batch), run.eval_loss(held_out)
    assert after < before - 0.2, (before, after)
    assert held_after < held_before - 0.2, (held_before, held_after)
