"""Peak memory and time of fused projection + CE vs plain logits + CE (forward + backward).

Method: each measurement runs in a fresh subprocess (1 thread). The subprocess builds the inputs
(hidden [N, D], weight [V, D], both requiring grad; labels with 10% ignored), reads its peak
resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`), runs one forward + backward, reads the
peak again and reports the increase. Both variants pay for the same outputs (`hidden.grad`,
`weight.grad`); the difference is the [N, V] logits and their gradient. Runs alternate
plain, fused, plain, fused, ...; the table shows medians and ratios.

    python benchmarks/train/bench_fused_ce.py                # vocab 32k, 8k tokens, dim 1024
    python benchmarks/train/bench_fused_ce.py --tokens 2048  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _child(variant: str, tokens: int, vocab: int, dim: int, chunk_size: int) -> None:
    import torch
    import torch.nn.functional as F

    from tune.train import fused_linear_cross_entropy

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(tokens, dim, generator=g) * 0.5).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) * dim**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[torch.rand(tokens, generator=g) < 0.1] = -100
    # a warm-up on a tiny problem loads kernels without touching the big buffers
    fused_linear_cross_entropy(hidden[:4].detach(), weight[:8].detach(), labels[:4] % 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if variant == "plain":
        loss = F.cross_entropy(hidden @ weight.t(), labels, ignore_index=-100, reduction="sum")
    else:
        loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size).loss_sum
    loss.backward()
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "variant": variant,
                "peak_delta": after - before,
                "seconds": elapsed,
                "loss": float(loss.detach()),
                "grad_weight_norm": float(weight.grad.norm()),
                "grad_hidden_norm": float(hidden.grad.norm()),
            }
        )
    )


def _run(variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens),
        "--vocab", str(args.vocab), "--dim", str(args.dim), "--chunk-size", str(args.chunk_size),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "fused"])
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.tokens, args.vocab, args.dim, args.chunk_size)
        return
    results: dict[str, list[dict]] = {"plain": [], "fused": []}
    for _ in range(args.repeats):
        for variant in ("plain", "fused"):
            results[variant].append(_run(variant, args))
    mib = 2**20
    plain_mem = statistics.median(r["peak_delta"] for r in results["plain"])
    fused_mem = statistics.median(r["peak_delta"] for r in results["fused"])
    plain_s = statistics.median(r["seconds"] for r in results["plain"])
    fused_s = statistics.median(r["seconds"] for r in results["fused"])
    p, f = results["plain"][0], results["fused"][0]
    print(
        f"fused vs plain CE, fwd+bwd: N={args.tokens} tokens, V={args.vocab}, D={args.dim}, "
        f"chunk={args.chunk_size}, fp32, 1 thread, {args.repeats} alternating runs each"
    )
    print(f"{'variant':<8} {'peak RSS increase (MiB)':>24} {'time (s)':>9}")
    print(f"{'plain':<8} {plain_mem / mib:>24.0f} {plain_s:>9.2f}")
    print(f"{'fused':<8} {fused_mem / mib:>24.0f} {fused_s:>9.2f}")
    print(
        f"{'ratio':<8} {fused_mem / plain_mem:>24.3f} {fused_s / plain_s:>9.3f}   (fused / plain)"
    )
    print(
        "parity: |loss diff| / loss = "
        f"{abs(p['loss'] - f['loss']) / abs(p['loss']):.2e}, grad_weight norm rel diff = "
        f"{abs(p['grad_weight_norm'] - f['grad_weight_norm']) / p['grad_weight_norm']:.2e}, "
        f"grad_hidden norm rel diff = "
        f"{abs(p['grad_hidden_norm'] - f['grad_hidden_norm']) / p['grad_hidden_norm']:.2e}"
    )


if __name__ == "__main__":
    main()
