"""Post-training quantization on the CPU: weight memory and inference speed per scheme vs float32.

Run: python benchmarks/quant/bench_ptq.py [--rounds 3] [--dim 768] [--hidden 2048] [--layers 2]

One thread. The model is a stack of transformer-shaped Linear layers (q/k/v/o projections and a
SwiGLU MLP per block). Every round times each variant once, interleaved (A B C ... A B C ...), and
the table reports medians as ratios to float32, so a busy machine slows all variants alike.
Memory is measured on the weights' storages (quantized data, scales and zero points included).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from tune.quant import SCHEMES, model_storage_bytes, quantize_model


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(dim, dim, bias=False) for _ in range(4)
        )
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Attention mixing is left out: only the Linear layers change under quantization.
        x = x + self.o_proj(self.q_proj(x) * torch.sigmoid(self.k_proj(x)) + self.v_proj(x))
        return x + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build(dim: int, hidden: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(dim, hidden) for _ in range(layers)]).eval()


def time_once(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = build(args.dim, args.hidden, args.layers)
    variants: dict[str, nn.Module] = {"float32": base}
    for scheme in SCHEMES:
        model = copy.deepcopy(base)
        quantize_model(model, scheme)
        variants[scheme] = model

    workloads = {
        "decode (1 token)": (torch.randn(1, args.dim), 10),
        "prefill (64 tokens)": (torch.randn(64, args.dim), 1),
    }
    times: dict[tuple[str, str], list[float]] = {}
    errors: dict[str, float] = {}
    with torch.inference_mode():
        x = workloads["prefill (64 tokens)"][0]
        ref = base(x)
        for name, model in variants.items():
            errors[name] = ((model(x) - ref).norm() / ref.norm()).item()
            for inputs, _ in workloads.values():
                model(inputs)  # warm-up
        for _ in range(args.rounds):
            for workload, (inputs, repeats) in workloads.items():
                for name, model in variants.items():
                    times.setdefault((workload, name), []).append(time_once(model, inputs, repeats))

    n_params = sum(p.numel() for p in base.parameters())
    float_bytes = model_storage_bytes(base)
    print(
        f"tune-quant PTQ on CPU, 1 thread, torch {torch.__version__}; {args.layers} blocks, "
        f"dim {args.dim}, hidden {args.hidden}, {n_params / 1e6:.1f} M params; "
        f"medians of {args.rounds} interleaved rounds"
    )
    header = ["scheme", "bytes/param", "memory vs fp32", "rel. error"] + [
        f"{w} time vs fp32" for w in workloads
    ]
    rows = []
    for name, model in variants.items():
        nbytes = model_storage_bytes(model)
        row = [
            name,
            f"{nbytes / n_params:.3f}",
            f"{nbytes / float_bytes:.3f}",
            f"{errors[name]:.4f}",
        ]
        for workload in workloads:
            ratio = statistics.median(times[(workload, name)]) / statistics.median(
                times[(workload, "float32")]
            )
            row.append(f"{ratio:.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    fp32_ms = {w: 1e3 * statistics.median(times[(w, "float32")]) for w in workloads}
    print("float32 absolute: " + ", ".join(f"{w} {ms:.2f} ms" for w, ms in fp32_ms.items()))


if __name__ == "__main__":
    main()
