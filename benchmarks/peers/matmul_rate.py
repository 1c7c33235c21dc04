"""The fp32 matmul rate of this CPU (the MFU denominator), printed as JSON.

Usage: python matmul_rate.py [THREADS] (default 1). Best of 30 2048 x 2048 x 2048 float32
matmuls, after a warm-up: on a shared VM single measurements vary by 1.3x, and the best is the
machine's rate (interference only ever lowers one).
"""

from __future__ import annotations

import json
import sys
import time

import torch


def matmul_flops_per_s(n: int = 2048, repeats: int = 30) -> float:
    """Best achieved FLOP/s of an n x n x n float32 matmul (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    print(json.dumps({"flops_per_s": matmul_flops_per_s(), "threads": torch.get_num_threads()}))
