"""MoE layer forward+backward on CUDA in bf16: tune's grouped-matmul experts vs transformers'.

A Qwen3-30B-A3B layer at full width (dim 2048, expert width 768, 128 experts, top-8, normalised
top-k) on random tokens, both blocks holding the same bf16 weights. For each implementation the
median step time after warm-up gives tokens/s and the achieved expert-matmul TFLOP/s
(6 x tokens x k x 3 x dim x expert width per forward+backward); the output's largest difference
against transformers' grouped_mm block is printed next to it (bf16, so ~1e-2 is equal).
Without CUDA it prints one SKIP line and exits 0 (`nox -s gpu` passes on the CPU).

    python benchmarks/gpu/bench_moe_grouped_mm.py [--tokens 8192] [--steps 10]
    python benchmarks/gpu/bench_moe_grouped_mm.py --device cpu --tiny   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def blocks(
    dim: int, width: int, experts: int, top_k: int, device: torch.device, dtype: torch.dtype
) -> dict[str, nn.Module]:
    """transformers' Qwen3-MoE block (grouped_mm and eager experts) and tune's, same weights."""
    from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3_moe

    from tune.models import MoEFeedForward

    def reference(implementation: str) -> nn.Module:
        config = qwen3_moe.Qwen3MoeConfig(
            hidden_size=dim,
            moe_intermediate_size=width,
            num_experts=experts,
            num_experts_per_tok=top_k,
            norm_topk_prob=True,
        )
        config._experts_implementation = implementation
        torch.manual_seed(0)
        block = qwen3_moe.Qwen3MoeSparseMoeBlock(config)
        with torch.no_grad():
            for p in block.parameters():
                p.normal_(0.0, 0.02)
        return block.to(device=device, dtype=dtype)

    hf = reference("grouped_mm")
    out: dict[str, nn.Module] = {
        "transformers grouped_mm": hf,
        "transformers eager": reference("eager"),
    }
    state = {("router.weight" if k == "gate.weight" else k): v for k, v in hf.state_dict().items()}
    for implementation in ("grouped_mm", "sorted"):
        ours = MoEFeedForward(dim, width, experts, top_k, norm_topk_prob=True)
        ours.load_state_dict(state)
        ours.experts.implementation = implementation  # type: ignore[assignment]
        out[f"tune {implementation}"] = ours.to(device=device, dtype=dtype)
    return out


def step(block: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    out = block(x)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(grad)
    block.zero_grad(set_to_none=True)
    return out.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="small shapes (smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("SKIP bench_moe_grouped_mm: no CUDA device")
        return 0
    dtype = torch.bfloat16
    dim, width, experts, top_k = (64, 32, 8, 2) if args.tiny else (2048, 768, 128, 8)
    tokens = 64 if args.tiny else args.tokens
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(1, tokens, dim, generator=gen).to(device=device, dtype=dtype)
    grad = torch.randn(1, tokens, dim, generator=gen).to(device=device, dtype=dtype)
    variants = blocks(dim, width, experts, top_k, device, dtype)
    flops = 6 * tokens * top_k * 3 * dim * width
    reference = step(variants["transformers grouped_mm"], x, grad)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, bf16, dim {dim}, expert width {width}, {experts} experts, top-{top_k}, "
          f"{tokens} tokens, forward+backward, median of {args.steps}")  # fmt: skip
    print(f"{'implementation':26} {'ms':>9} {'tokens/s':>11} {'TFLOP/s':>8} {'max |d out|':>12}")
    for label, block in variants.items():
        if label == "transformers eager" and not args.tiny:
            steps = max(2, args.steps // 5)  # a Python loop over 128 experts: slow
        else:
            steps = args.steps
        out = step(block, x, grad)  # warm-up
        times = []
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            step(block, x, grad)
            _sync(device)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        diff = (out.float() - reference.float()).abs().max().item()
        print(f"{label:26} {t * 1e3:9.2f} {tokens / t:11.0f} {flops / t / 1e12:8.1f} {diff:12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
