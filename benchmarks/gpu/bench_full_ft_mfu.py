"""Full fine-tuning step time and MFU of a Llama-3.2-1B-shaped random model, bf16, compiled, CUDA.

One process, one device: the model (random weights, the named size's shapes) in bfloat16, each
transformer block compiled (`nn.Module.compile`, as `tune.dist.parallelize` does), AdamW with
fused kernels (bf16 weights and states, no fp32 master copy), the fused linear cross-entropy of
tune.train, on random tokens. After warm-up steps (compilation included), the median step time
of the measured steps gives tokens/s and MFU = tokens/s x FLOPs/token (6 N + 12 L T D) / peak,
against two peaks: the bf16 matmul rate measured in this run, and the device's nominal dense bf16
rate where it is known.
Without CUDA it prints one SKIP line and exits 0 (`nox -s gpu` passes on the CPU).
Numbers, not pass/fail; the issue's target is >= 45% MFU on one H100.

    python benchmarks/gpu/bench_full_ft_mfu.py [--batch 4] [--seq 2048] [--steps 10]
    python benchmarks/gpu/bench_full_ft_mfu.py --device cpu --tiny   # a smoke run of the code path
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from timed_training import sync, train_random_tokens

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' data sheets, FLOP/s.
NOMINAL_BF16 = {"H100 80GB HBM3": 989e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Best achieved FLOP/s of an n x n x n matmul in `dtype` (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def nominal_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in NOMINAL_BF16.items() if key in name), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="llama3.2-1b")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="2 narrow layers (a CPU smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"SKIP bench_full_ft_mfu: no CUDA device (torch {torch.__version__}, "
              f"cuda build {torch.version.cuda}); run it where a GPU is present")  # fmt: skip
        return 0

    from tune.models import build_from_hf_config, named_size_config
    from tune.train import transformer_flops_per_token

    config = named_size_config(args.size)
    if args.tiny:
        config.update(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      vocab_size=1024)  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.bfloat16
    model = build_from_hf_config(config, device=device, dtype=dtype)
    model.train()
    compiled = not args.no_compile and device.type == "cuda"
    if compiled:  # per block, as tune.dist.parallelize compiles
        for block in model.layers.values():
            block.compile()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-5, fused=device.type == "cuda", foreach=None
    )
    vocab = config["vocab_size"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = train_random_tokens(
        model, optimizer, vocab=vocab, batch=args.batch, seq=args.seq, warmup=args.warmup,
        steps=args.steps, device=device,
    )  # fmt: skip

    # Matmul parameters: all but the input embedding (a tied head counts once, as the head).
    n_params = sum(p.numel() for p in model.parameters())
    if not config.get("tie_word_embeddings", False):
        n_params -= vocab * config["hidden_size"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    attn_dim = config["num_attention_heads"] * head_dim
    per_token = transformer_flops_per_token(
        n_params, config["num_hidden_layers"], args.seq, attn_dim
    )
    step_s = statistics.median(times)
    tokens_per_s = args.batch * args.seq / step_s
    measured = matmul_rate(device, dtype, n=8192 if device.type == "cuda" else 512)
    nominal = nominal_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": name, "size": args.size + (" (tiny)" if args.tiny else ""),
        "batch": args.batch, "seq": args.seq, "compile": compiled, "dtype": "bfloat16",
        "step_s_median": step_s, "tokens_per_s": tokens_per_s,
        "mfu_vs_measured_matmul": tokens_per_s * per_token / measured,
        "mfu_vs_nominal": None if nominal is None else tokens_per_s * per_token / nominal,
        "measured_matmul_tflops": measured / 1e12, "nominal_tflops": None if nominal is None
        else nominal / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda" else None,
        "loss_first_last": [losses[0], losses[-1]],
    }  # fmt: skip
    print(f"full fine-tuning {result['size']} on {name}: {step_s * 1e3:.1f} ms/step, "
          f"{tokens_per_s:,.0f} tokens/s, MFU {result['mfu_vs_measured_matmul']:.1%} of the "
          f"measured matmul rate ({measured / 1e12:.0f} TFLOP/s)"
          + ("" if nominal is None else f", {result['mfu_vs_nominal']:.1%} of nominal"))  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
