"""MoE block forward+backward: tune.models.MoEFeedForward vs transformers' Qwen3-MoE block.

Three tables, CPU, float32, 1 thread, both blocks holding the same weights:

1. A Qwen3-30B-A3B-shaped layer at a quarter of its width (dim 512, expert width 192, 128 experts,
   top-8, normalised top-k) for several token counts: median step time of each implementation,
   tune's ratio to transformers' per-expert loop ("eager") and to its model-level default
   ("grouped_mm", the same torch kernel as ours), the matmul floor (the block's FLOPs at this
   thread's measured matmul rate) and the largest difference of the output and of the input
   gradient against the eager loop (equal results are part of the measurement).
2. The published Qwen3-30B-A3B layer itself (dim 2048, expert width 768, 128 experts, top-8):
   tune against transformers' ``grouped_mm`` only, and the differences against it (the eager
   loop's backward writes zero-filled gradients of both expert stacks, 2.4 GB, per expert).
3. Per-token cost as the number of experts grows from 8 to 128 at fixed active parameters (top-8,
   quarter-width experts): time per token relative to 8 experts, for each implementation.

Steps alternate between implementations (A B C A B C ...) so drift hits all alike.

    python benchmarks/models/bench_moe_block.py [--rounds 3] [--skip-published]
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

DIM, EXPERT_WIDTH, TOP_K = 512, 192, 8  # the quarter-width layer of tables 1 and 3
PUBLISHED_DIM, PUBLISHED_WIDTH = 2048, 768  # Qwen3-30B-A3B: hidden_size, moe_intermediate_size


def transformers_block(
    num_experts: int, implementation: str, dim: int = DIM, width: int = EXPERT_WIDTH
) -> nn.Module:
    """transformers' Qwen3-MoE sparse block, random weights (seeded, so every call is equal)."""
    from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3_moe

    config = qwen3_moe.Qwen3MoeConfig(
        hidden_size=dim,
        moe_intermediate_size=width,
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


def tune_block(
    reference: nn.Module,
    num_experts: int,
    implementation: str,
    dim: int = DIM,
    width: int = EXPERT_WIDTH,
) -> nn.Module:
    """Ours with the reference block's weights (only the router's name differs)."""
    from tune.models import MoEFeedForward

    block = MoEFeedForward(dim, width, num_experts, TOP_K, norm_topk_prob=True)
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


def inputs(tokens: int, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(1, tokens, dim, generator=gen), torch.randn(1, tokens, dim, generator=gen)


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


def matmul_flops(tokens: int, num_experts: int, dim: int = DIM, width: int = EXPERT_WIDTH) -> float:
    """Matmul FLOPs of one forward+backward (weight gradients included): each of the
    ``tokens * TOP_K`` routed copies meets gate+up [dim -> 2 * width] and down
    [width -> dim]; the router is [dim -> num_experts]. Backward = 2x forward."""
    experts = 2 * tokens * TOP_K * 3 * dim * width
    router = 2 * tokens * dim * num_experts
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


def table_published_layer(rounds: int) -> None:
    dim, width = PUBLISHED_DIM, PUBLISHED_WIDTH
    print(
        f"\n2. The published Qwen3-30B-A3B layer: dim {dim}, expert width {width}, 128 experts,"
        f" top-{TOP_K}; differences against transformers grouped_mm"
    )
    rate = matmul_rate()
    hf = transformers_block(128, "grouped_mm", dim, width)
    blocks = {"transformers grouped_mm": hf, "tune auto": tune_block(hf, 128, "auto", dim, width)}
    print(
        f"{'tokens':>6} {'transformers grouped_mm ms':>27} {'tune auto ms':>13}"
        f" {'grouped_mm / tune auto':>23} {'floor ms':>9} {'tune / floor':>13}"
        f" {'max |d out|':>12} {'max |d grad|':>12} {'max |out|':>10}"
    )
    for tokens in (128, 512, 2048):
        x, grad = inputs(tokens, dim)
        times = median_times(blocks, x, grad, rounds)
        _, want_out, want_grad = step(hf, x, grad)
        _, out, x_grad = step(blocks["tune auto"], x, grad)
        d_out = (out - want_out).abs().max().item()
        d_grad = (x_grad - want_grad).abs().max().item()
        tune = times["tune auto"]
        floor = matmul_flops(tokens, 128, dim, width) / rate
        print(
            f"{tokens:6d} {times['transformers grouped_mm'] * 1e3:27.1f} {tune * 1e3:13.1f}"
            f" {times['transformers grouped_mm'] / tune:23.2f} {floor * 1e3:9.1f}"
            f" {tune / floor:13.2f} {d_out:12.2e} {d_grad:12.2e}"
            f" {want_out.abs().max().item():10.2e}"
        )


def table_flatness(rounds: int, tokens: int = 2048) -> None:
    print(
        f"\n3. Per-token cost at fixed active parameters (top-{TOP_K}, expert width {EXPERT_WIDTH}),"
        f" {tokens} tokens; relative to 8 experts. Every round steps every expert count, so drift"
        " hits all rows alike. transformers eager is left out past 32 experts: its backward writes"
        " one zero-filled [E, out, in] gradient per expert (quadratic in E)."
    )
    counts = (8, 16, 32, 64, 128)
    blocks: dict[str, nn.Module] = {}
    for num_experts in counts:
        for name, block in variants(num_experts).items():
            if not (name == "transformers eager" and num_experts > 32):
                blocks[f"{num_experts}/{name}"] = block
    x, grad = inputs(tokens)
    times = median_times(blocks, x, grad, rounds)
    names = list(variants(8))
    print(f"{'experts':>7} " + " ".join(f"{n + ' us/token (rel)':>38}" for n in names))
    for num_experts in counts:
        cells = []
        for name in names:
            key = f"{num_experts}/{name}"
            if key not in times:
                cells.append(f"{'-':>38}")
                continue
            per_token = times[key] / tokens * 1e6
            base = times[f"{counts[0]}/{name}"] / tokens * 1e6
            cells.append(f"{per_token:30.1f} ({per_token / base:4.2f})")
        print(f"{num_experts:7d} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--skip-published",
        action="store_true",
        help="leave out table 2 (the full-width layer: about 3 minutes and 10 GB of memory)",
    )
    args = parser.parse_args()
    print(
        f"CPU, {torch.get_num_threads()} thread(s), float32, forward+backward, median of {args.rounds}"
    )
    sections: list[Callable[[int], None]] = [table_layer, table_flatness]
    if not args.skip_published:
        sections.insert(1, table_published_layer)
    for section in sections:
        section(args.rounds)


if __name__ == "__main__":
    main()
