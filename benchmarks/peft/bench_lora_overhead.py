"""LoRA / DoRA layer forward+backward time over the plain frozen linear, and trainable-parameter cost.

Run: `python benchmarks/peft/bench_lora_overhead.py` (1 thread, CPU, float32). Times are measured
in one run, alternating plain and adapted layers (A B A B), and reported as ratios to the plain
frozen `nn.Linear` (the QLoRA/LoRA base). The second table counts trainable parameters for
all-linear adapters on a Llama-3-8B-shaped stack of linears built on the meta device (no memory).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tune.peft import LoraConfig, LoRALinear, apply_lora, count_parameters


def _frozen_linear(dim: int) -> nn.Linear:
    linear = nn.Linear(dim, dim, bias=False)
    linear.weight.requires_grad_(False)
    return linear


def _adapted(base: nn.Linear, r: int, dora: bool) -> LoRALinear:
    layer = LoRALinear.from_linear(base)
    layer.add_adapter("default", LoraConfig(r=r, alpha=2.0 * r, use_dora=dora))
    return layer


def _step(layer: nn.Module, x: torch.Tensor) -> None:
    out = layer(x)
    out.backward(torch.ones_like(out))
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def _time(layer: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    _step(layer, x)
    return time.perf_counter() - start


def bench_overhead(dim: int, tokens: int, reps: int, ranks: list[int]) -> None:
    torch.manual_seed(0)
    base = _frozen_linear(dim)
    x = torch.randn(tokens, dim, requires_grad=True)  # hidden states: input grads are needed
    variants = {f"LoRA r={r}": _adapted(base, r, dora=False) for r in ranks}
    variants |= {f"DoRA r={r}": _adapted(base, r, dora=True) for r in ranks}
    print(
        f"\nforward+backward, [{tokens}, {dim}] x [{dim}, {dim}], 1 thread, medians of {reps} A/B pairs"
    )
    print(f"{'layer':<12} {'ms':>8} {'plain ms':>9} {'ratio':>7}")
    for name, layer in variants.items():
        for _ in range(2):  # warm-up
            _step(base, x)
            _step(layer, x)
        plain_t, adapted_t = [], []
        for _ in range(reps):  # A B A B
            plain_t.append(_time(base, x))
            adapted_t.append(_time(layer, x))
        p, a = statistics.median(plain_t), statistics.median(adapted_t)
        # Median of per-pair ratios: robust to load on a shared machine changing between pairs.
        ratio = statistics.median(x / y for x, y in zip(adapted_t, plain_t, strict=True))
        print(f"{name:<12} {a * 1e3:8.2f} {p * 1e3:9.2f} {ratio:7.3f}")


class _MetaDecoder(nn.Module):
    """Linear layers of a Llama-3-8B-shaped decoder (attention + MLP projections and the head)."""

    def __init__(self, hidden: int, inter: int, kv: int, layers: int, vocab: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.attn = nn.ModuleDict(
                {
                    "q_proj": nn.Linear(hidden, hidden, bias=False),
                    "k_proj": nn.Linear(hidden, kv, bias=False),
                    "v_proj": nn.Linear(hidden, kv, bias=False),
                    "o_proj": nn.Linear(hidden, hidden, bias=False),
                }
            )
            block.mlp = nn.ModuleDict(
                {
                    "gate_proj": nn.Linear(hidden, inter, bias=False),
                    "up_proj": nn.Linear(hidden, inter, bias=False),
                    "down_proj": nn.Linear(inter, hidden, bias=False),
                }
            )
            self.layers.append(block)
        self.output = nn.Linear(hidden, vocab, bias=False)


def bench_trainable(ranks: list[int]) -> None:
    print("\ntrainable parameters, all-linear adapters on Llama-3-8B linear shapes (meta device)")
    print(
        f"{'adapter':<18} {'trainable':>12} {'% of linears':>13} {'MiB fp32':>9} {'MiB +AdamW':>11}"
    )
    for dora in (False, True):
        for r in ranks:
            with torch.device("meta"):
                model = _MetaDecoder(hidden=4096, inter=14336, kv=1024, layers=32, vocab=128256)
            base_total = count_parameters(model).total
            apply_lora(model, LoraConfig(r=r, use_dora=dora))
            counts = count_parameters(model)
            mib = counts.trainable_bytes / 2**20
            # fp32 weights + grads + two AdamW moments
            print(
                f"{('DoRA' if dora else 'LoRA') + f' r={r}':<18} {counts.trainable:>12,} "
                f"{100 * counts.trainable / base_total:>12.3f}% {mib:>9.1f} {4 * mib:>11.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_overhead(args.dim, args.tokens, args.reps, args.ranks)
    bench_trainable(args.ranks)


if __name__ == "__main__":
    main()
