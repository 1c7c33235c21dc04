"""Activation memory of a transformer step with checkpointing and offloading (tune.dist).

Measures the peak memory a forward+backward step adds on top of the weights, per configuration:
none, checkpoint every block, checkpoint every 2nd block, offload every block, and both.

On CUDA the numbers are torch.cuda.max_memory_allocated. On CPU there is no device memory to
free, so a dispatch-mode tracker counts the bytes of every live tensor storage (freed when the
storage dies), and the offloader's copies are counted as host memory: the device column is what
would sit on an accelerator. Step time is measured separately (no tracker), alternating configs.

Usage: python benchmarks/dist/bench_activation_memory.py [--device cuda] [--layers 4] [--seq 512]
"""

from __future__ import annotations

import argparse
import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import tune.dist as td


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, -1).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )  # (B, h, T, hd)
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class Model(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, n_layers: int) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleDict({str(i): Block(dim, heads) for i in range(n_layers)})
        self.norm = nn.RMSNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h)
        return self.output(self.norm(h))


class LiveBytes(TorchDispatchMode):
    """Counts bytes of live tensor storages created under it; peak split into device and host."""

    def __init__(self) -> None:
        super().__init__()
        self.live = {"device": 0, "host": 0}
        self.peak_device = 0
        self._seen: set[int] = set()
        self._kind = "device"

    @contextlib.contextmanager
    def host(self) -> Iterator[None]:
        previous, self._kind = self._kind, "host"
        try:
            yield
        finally:
            self._kind = previous

    def _release(self, key: int, kind: str, nbytes: int) -> None:
        self._seen.discard(key)
        self.live[kind] -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._seen:
                    self._seen.add(key)
                    nbytes = storage.nbytes()
                    self.live[self._kind] += nbytes
                    weakref.finalize(storage, self._release, key, self._kind, nbytes)
        self.peak_device = max(self.peak_device, self.live["device"])
        return out


class TrackedOffloader(td.ActivationOffloader):
    """Counts its copies as host memory in the tracker."""

    tracker: LiveBytes | None = None

    def _copy_to_host(self, tensor: torch.Tensor) -> Any:
        if self.tracker is None:
            return super()._copy_to_host(tensor)
        with self.tracker.host():
            return super()._copy_to_host(tensor)


def _offload(model: nn.Module, match: td.ModuleMatch, on_cpu: bool) -> TrackedOffloader:
    td.apply_activation_offloading(model, match, include_host_tensors=on_cpu)
    tracked = TrackedOffloader(include_host_tensors=on_cpu)
    for _, block in td.find_modules(model, match):
        block._tune_offloader = tracked  # the blocks share one offloader; swap in the tracked one
    return tracked


def apply_config(name: str, model: nn.Module, on_cpu: bool) -> TrackedOffloader | None:
    if name == "checkpoint all":
        td.apply_activation_checkpointing(model, "layers.*")
    elif name == "checkpoint every 2nd":
        td.apply_activation_checkpointing(model, "layers.*", every_n=2)
    elif name == "offload all":
        return _offload(model, "layers.*", on_cpu)
    elif name == "checkpoint 2nd + offload rest":
        td.apply_activation_checkpointing(model, "layers.*", every_n=2)
        odd = [n for i, (n, _) in enumerate(td.find_modules(model, "layers.*")) if i % 2]
        return _offload(model, lambda n, _m: n in odd, on_cpu)
    return None


NAMES = ["none", "checkpoint all", "checkpoint every 2nd", "offload all",
         "checkpoint 2nd + offload rest"]  # fmt: skip


def step(model: nn.Module, tokens: torch.Tensor) -> None:
    logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    tokens = torch.randint(0, 1024, (args.batch, args.seq), device=device)

    def build(name: str) -> tuple[nn.Module, TrackedOffloader | None]:
        torch.manual_seed(0)
        model = Model(1024, args.dim, 8, args.layers).to(device)
        return model, apply_config(name, model, on_cpu)

    peak: dict[str, int] = {}
    for name in NAMES:
        model, offloader = build(name)
        step(model, tokens)  # warm-up: allocates gradients, so the measured step excludes them
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(model, tokens)
            torch.cuda.synchronize()
            peak[name] = torch.cuda.max_memory_allocated() - base
        else:
            tracker = LiveBytes()
            if offloader is not None:
                offloader.tracker = tracker
            with tracker:
                step(model, tokens)
            peak[name] = tracker.peak_device

    times = {name: 0.0 for name in NAMES}
    models = {name: build(name)[0] for name in NAMES}
    for _ in range(args.repeats):  # alternate configs: A B C ... A B C ...
        for name in NAMES:
            start = time.perf_counter()
            step(models[name], tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name] += time.perf_counter() - start

    how = "cuda max_memory_allocated" if device.type == "cuda" else "live-storage tracker, CPU"
    print(f"activation memory of one step: {args.layers} layers, dim {args.dim}, "
          f"batch {args.batch} x seq {args.seq}, device {device.type} ({how})")  # fmt: skip
    print(f"{'config':<32}{'peak MiB':>10}{'vs none':>10}{'time vs none':>14}")
    for name in NAMES:
        print(
            f"{name:<32}{peak[name] / 2**20:>10.1f}{peak[name] / peak['none']:>10.2f}"
            f"{times[name] / times['none']:>14.2f}"
        )


if __name__ == "__main__":
    main()
