"""MoE block forward+backward: tune.models.MoEFeedForward vs transformers' Qwen3-MoE block.

Two tables, CPU, float32, 1 thread, both blocks holding the same weights:

1. A Qwen3-30B-A3B-shaped layer at a quarter of its width (dim 512, expert width 192, 128 experts,
   top-8, normalised top-k) for several token counts: median step time of each implementation,
   tune's ratio to transformers' per-expert loop ("eager") and to its model-level default
   ("grouped_mm", the same torch kernel as ours), the matmul floor (the block's FLOPs at this
   thread's measured matmul rate) and the largest difference of the output and of the input
   gradient against the eager loop (equal results are part of the measurement).
2. Per-token cost as the number of experts grows from 8 to 128 at fixed active parameters (top-8,
   same expert width): time per token relative to 8 experts, for each implementation.

Steps alternate between implementations (A B C A B C ...) so drift hits all alike.

    python benchmarks/models/bench_moe_block.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

torch.set_num_threads(1)

DIM, EXPERT_WIDTH, TOP_K = 512, 192, 8


def transformers_block(num_experts: int, implementation: str) -> nn.Module:
    """transformers' Qwen3-MoE sparse block, random weights (seeded, so every call is equal)."""
    from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3_moe

    config = qwen3_moe.Qwen3MoeConfig(
        hidden_size=DIM,
        moe_intermediate_size=EXPERT_WIDTH,
        num_experts=num_experts,
        num_experts_per_tok=TOP_K,
        norm_topk_prob=True,
        hidden_act="silu",
    )
    config._experts_implementation = implementation
    torch.manual_seed(0)
    block = qwen3_moe.Qwen3MoeSparseMoeBlock(config)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.05)
    return block


def tune_block(reference: nn.Module, num_experts: int, implementation: str) -> nn.Module:
    """Ours with the reference block's weights (only the router's name differs)."""
    from tune.models import MoEFeedForward

    block = MoEFeedForward(DIM, EXPERT_WIDTH, num_experts, TOP_K, norm_topk_prob=True)
    state = {
        ("router.weight" if k == "gate.weight" else k): v for k, v in reference.state_dict().items()
    }
    block.load_state_dict(state, strict=True)
    block.experts.implementation = implementation  # type: ignore[assignment]
    return block


def variants(num_experts: int) -> dict[str, nn.Module]:
    hf_eager = transformers_block(num_experts, "eager")
    return {
        "transformers eager": hf_eager,
        "transformers grouped_mm": transformers_block(num_experts, "grouped_mm"),
        "tune auto": tune_block(hf_eager, num_experts, "auto"),
        "tune sorted": tune_block(hf_eager, num_experts, "sorted"),
    }


def step(
    block: nn.Module, x: torch.Tensor, grad: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One forward+backward: (seconds, output, input gradient)."""
    x = x.clone().requires_grad_(True)
    start = time.perf_counter()
    out = block(x)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(grad)
    elapsed = time.perf_counter() - start
    block.zero_grad(set_to_none=True)
    assert x.grad is not None
    return elapsed, out.detach(), x.grad


def median_times(
    blocks: dict[str, nn.Module], x: torch.Tensor, grad: torch.Tensor, rounds: int
) -> dict[str, float]:
    for block in blocks.values():
        step(block, x, grad)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(rounds):
        for name, block in blocks.items():
            times[name].append(step(block, x, grad)[0])
    return {name: statistics.median(t) for name, t in times.items()}


def inputs(tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(1, tokens, DIM, generator=gen), torch.randn(1, tokens, DIM, generator=gen)


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n float32 matmul on this thread (the floor's denominator)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_flops(tokens: int, num_experts: int) -> float:
    """Matmul FLOPs of one forward+backward (weight gradients included): each of the
    ``tokens * TOP_K`` routed copies meets gate+up [DIM -> 2 * EXPERT_WIDTH] and down
    [EXPERT_WIDTH -> DIM]; the router is [DIM -> num_experts]. Backward = 2x forward."""
    experts = 2 * tokens * TOP_K * 3 * DIM * EXPERT_WIDTH
    router = 2 * tokens * DIM * num_experts
    return 3 * (experts + router)


def table_layer(rounds: int) -> None:
    print(
        f"\n1. Qwen3-MoE-shaped layer: dim {DIM}, expert width {EXPERT_WIDTH}, 128 experts, top-{TOP_K}"
    )
    rate = matmul_rate()
    print(
        f"   floor = the block's matmul FLOPs at this thread's best 2048^3 matmul rate "
        f"({rate / 1e9:.1f} GFLOP/s): no implementation at equal FLOPs runs below it, so "
        "'grouped_mm / floor' bounds any speed-up over transformers' default (grouped_mm)"
    )
    blocks = variants(128)
    names = list(blocks)
    head = f"{'tokens':>6} " + " ".join(f"{n + ' ms':>26}" for n in names)
    print(
        head + f" {'eager / tune auto':>18} {'grouped_mm / tune auto':>23} {'floor ms':>9}"
        f" {'grouped_mm / floor':>19} {'max |d out|':>12} {'max |d grad|':>12}"
    )
    for tokens in (128, 512, 2048):
        x, grad = inputs(tokens)
        times = median_times(blocks, x, grad, rounds)
        _, want_out, want_grad = step(blocks["transformers eager"], x, grad)
        _, out, x_grad = step(blocks["tune auto"], x, grad)
        d_out = (out - want_out).abs().max().item()
        d_grad = (x_grad - want_grad).abs().max().item()
        ratio = times["transformers eager"] / times["tune auto"]
        grouped = times["transformers grouped_mm"]
        floor = matmul_flops(tokens, 128) / rate
        cells = " ".join(f"{times[n] * 1e3:26.1f}" for n in names)
        print(
            f"{tokens:6d} {cells} {ratio:18.2f} {grouped / times['tune auto']:23.2f}"
            f" {floor * 1e3:9.1f} {grouped / floor:19.2f} {d_out:12.2e} {d_grad:12.2e}"
        )


def table_flatness(rounds: int, tokens: int = 2048) -> None:
    print(
        f"\n2. Per-token cost at fixed active parameters (top-{TOP_K}, expert width {EXPERT_WIDTH}),"
        f" {tokens} tokens; relative to 8 experts. transformers eager is left out past 32 experts:"
        " its backward writes one zero-filled [E, out, in] gradient per expert (quadratic in E)."
    )
    base: dict[str, float] = {}
    x, grad = inputs(tokens)
    names = list(variants(8))
    print(f"{'experts':>7} " + " ".join(f"{n + ' us/token (rel)':>38}" for n in names))
    for num_experts in (8, 16, 32, 64, 128):
        blocks = variants(num_experts)
        if num_experts > 32:
            del blocks["transformers eager"]
        times = median_times(blocks, x, grad, rounds)
        cells = []
        for name in names:
            if name not in times:
                cells.append(f"{'-':>38}")
                continue
            per_token = times[name] / tokens * 1e6
            base.setdefault(name, per_token)
            cells.append(f"{per_token:30.1f} ({per_token / base[name]:4.2f})")
        print(f"{num_experts:7d} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"CPU, {torch.get_num_threads()} thread(s), float32, forward+backward, median of {args.rounds}"
    )
    sections: list[Callable[[int], None]] = [table_layer, table_flatness]
    for section in sections:
        section(args.rounds)


if __name__ == "__main__":
    main()
