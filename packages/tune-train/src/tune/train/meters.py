"""Throughput, step time, peak memory and model FLOPs utilisation."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor


def count_nonpadding_tokens(
    tokens: Tensor, attention_mask: Tensor | None = None, *, padding_mask: Tensor | None = None
) -> int:
    """Real tokens of a batch: neither padding of a padded batch nor the tail padding of a pack.

    The batch contract (tune-data's collators follow it; any other loader may): a padded batch
    carries `attention_mask` (1 real, 0 padding); a packed batch carries no attention mask (its
    padding is a document of its own) but a `padding_mask` (True on padding). A batch with
    neither (padding-free rows) is all real tokens.

    Args:
        tokens: [B, T] token ids.
        attention_mask: [B, T] 1 for real tokens, 0 for padding (padded batches).
        padding_mask: [B, T] bool, True on padding (packed batches).
    """
    for name, mask in (("attention_mask", attention_mask), ("padding_mask", padding_mask)):
        if mask is not None and mask.shape != tokens.shape:
            raise ValueError(f"{name} {tuple(mask.shape)} must match tokens {tuple(tokens.shape)}")
    if attention_mask is not None:
        real = attention_mask.bool()
        if padding_mask is not None:
            real = real & ~padding_mask.bool()
        return int(real.sum())
    if padding_mask is not None:
        return tokens.numel() - int(padding_mask.bool().sum())
    return tokens.numel()


def count_batch_tokens(batch: Mapping[str, Tensor]) -> int:
    """`count_nonpadding_tokens` of a batch dict: reads `tokens`, `attention_mask`, `padding_mask`.

    Args:
        batch: `tokens` [B, T] and optionally `attention_mask` / `padding_mask` [B, T].
    """
    if "tokens" not in batch:
        raise ValueError(f"count_batch_tokens: the batch has no 'tokens' (keys: {sorted(batch)})")
    return count_nonpadding_tokens(
        batch["tokens"], batch.get("attention_mask"), padding_mask=batch.get("padding_mask")
    )


def seconds_since_process_start() -> float | None:
    """Wall-clock seconds since this process started (Linux `/proc`), or None where unknown.

    Interpreter start-up and imports included: what a user waits between launching a command
    and, say, its first training step.
    """
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime, clock ticks after boot); the name in field 2 may hold spaces.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """Peak memory: CUDA `max_memory_allocated` on a CUDA device, else the process's peak RSS.

    The CPU figure is `getrusage(RUSAGE_SELF).ru_maxrss` (the whole process, since it started;
    it cannot be reset).

    Args:
        device: the device to report on (default: CPU).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Reset CUDA's peak counter (a no-op on CPU, whose peak RSS cannot be reset).

    Args:
        device: the device.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def transformer_flops_per_token(
    n_params: int, n_layers: int, seq_len: int, dim: int, *, training: bool = True
) -> float:
    """FLOPs per token of a decoder-only transformer (the PaLM appendix B count).

    Forward: `2 N` for the matmuls with the weights plus `4 L T D` for attention scores and the
    weighted sum (full, unmasked count). Training (forward + backward) is 3× that:
    `6 N + 12 L T D`.

    Args:
        n_params: parameters in matmuls (embeddings excluded by convention, output head included).
        n_layers: transformer layers L.
        seq_len: sequence length T.
        dim: model width D (heads × head dim).
        training: count forward and backward.
    """
    forward = 2.0 * n_params + 4.0 * n_layers * seq_len * dim
    return 3.0 * forward if training else forward


def model_flops_utilization(
    tokens_per_second: float, flops_per_token: float, peak_flops_per_second: float
) -> float:
    """Achieved model FLOPs per second over the hardware peak (0..1).

    Args:
        tokens_per_second: trained tokens per second (per device, for a per-device peak).
        flops_per_token: e.g. `transformer_flops_per_token(...)`.
        peak_flops_per_second: the device's peak for the dtype used (e.g. 989e12 for H100 bf16).
    """
    if peak_flops_per_second <= 0:
        raise ValueError(f"peak_flops_per_second must be positive, got {peak_flops_per_second}")
    return tokens_per_second * flops_per_token / peak_flops_per_second


class ThroughputMeter:
    """Times a step and turns its token count into tokens/s, MFU and peak memory.

    Use `start()` before the step and `stop(num_tokens)` after the optimizer step.

    Args:
        flops_per_token: model FLOPs per token (enables the `mfu` metric with `peak_flops`).
        peak_flops: hardware peak FLOP/s of one device.
        device: device for memory (and CUDA synchronisation before reading the clock).
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        device: torch.device | str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.clock = clock
        self._start: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """Mark the start of a step."""
        self._sync()
        self._start = self.clock()

    def stop(self, num_tokens: int | Tensor) -> dict[str, float]:
        """End the step; returns `step_time_s`, `tokens_per_s`, `peak_memory_gib` (+ `mfu`).

        Args:
            num_tokens: non-padding tokens processed in the step (this rank).
        """
        if self._start is None:
            raise RuntimeError("ThroughputMeter.stop() called before start()")
        self._sync()
        elapsed = self.clock() - self._start
        self._start = None
        tokens = float(num_tokens)
        tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
        metrics = {
            "step_time_s": elapsed,
            "tokens_per_s": tokens_per_s,
            "peak_memory_gib": peak_memory_bytes(self.device) / 2**30,
        }
        if self.flops_per_token is not None and self.peak_flops is not None:
            metrics["mfu"] = model_flops_utilization(
                tokens_per_s, self.flops_per_token, self.peak_flops
            )
        return metrics
