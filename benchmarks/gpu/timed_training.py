"""The timed training loop the GPU benchmarks share (imported from the scripts' directory)."""

from __future__ import annotations

import time

import torch
from torch import nn


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_random_tokens(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    vocab: int,
    batch: int,
    seq: int,
    warmup: int,
    steps: int,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """``warmup + steps`` sft steps (fused linear CE, mean over tokens) on random [batch, seq]
    tokens: (seconds of each measured step, loss of every step)."""
    from tune.train.steps import micro_batch_loss

    g = torch.Generator(device=device).manual_seed(0)
    times: list[float] = []
    losses: list[float] = []
    for step in range(warmup + steps):
        tokens = torch.randint(0, vocab, (batch, seq), device=device, generator=g)
        inputs = {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1)}
        sync(device)
        start = time.perf_counter()
        loss = micro_batch_loss(model, inputs, fused=True).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # syncs
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times, losses
