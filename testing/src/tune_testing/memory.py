"""Peak CPU memory of one training step, measured from torch's CPU allocator traffic.

The peak is the bytes alive in tensors when the step starts (parameters, buffers, optimizer state,
summed over distinct storages) plus the peak of the allocator's running balance during the step:
``torch.profiler.profile(profile_memory=True)`` records every allocation (+bytes) and free
(-bytes) of the c10 CPU allocator as a ``[memory]`` event, so their running sum in time order is
the bytes allocated since the step began (temporaries, recomputed activations and collective
buffers included; the allocator's caching and the Python heap excluded). The same method as
``recipes/tune-recipes/tests/plan_memory_runs.py``::

    step()  # warm-up: AdamW state exists from here on
    peak = step_peak_bytes(step, model, optimizer)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def persistent_bytes(*objects: nn.Module | torch.optim.Optimizer | torch.Tensor) -> int:
    """Bytes of the distinct storages held by modules (parameters, buffers, gradients),
    optimizers (their state) and tensors."""
    storages: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        local = getattr(t, "_local_tensor", t)  # a DTensor's shard
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()

    for obj in objects:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                add(p.detach())
                if p.grad is not None:
                    add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        add(v)
        else:
            add(obj)
    return sum(storages.values())


def allocator_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the CPU allocator's running balance (bytes) while ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = prof.profiler.kineto_results  # type: ignore[union-attr]
    events = sorted(
        (e for e in results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    balance = peak = 0
    for e in events:
        balance += e.nbytes()
        peak = max(peak, balance)
    return peak


def step_peak_bytes(step: Callable[[], Any], *objects: nn.Module | torch.optim.Optimizer) -> int:
    """Peak bytes alive during ``step()``: ``persistent_bytes(*objects)`` when it starts plus the
    allocator's peak during it. Run a warm-up step first so the optimizer state exists."""
    return persistent_bytes(*objects) + allocator_peak_bytes(step)
