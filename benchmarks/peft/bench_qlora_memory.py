"""Peak memory of LoRA training over a frozen NF4 base (QLoRA) vs over a bf16 base, measured.

Run: `python benchmarks/peft/bench_qlora_memory.py`. Each variant runs in a fresh subprocess: it
builds a stack of `--layers` x [`--dim`, `--dim`] linears (bf16, or quantized layer by layer with
torchao's `to_nf4`), adds LoRA (r=16) with tune.peft, and trains a few steps with AdamW. On CPU,
memory is the process's resident set: the peak (VmHWM) is reset after imports and again after
building, so the table shows the base's resident size and the training peak, both over the
post-import baseline (subprocesses run with `MALLOC_MMAP_THRESHOLD_=65536` so freed blocks leave
the resident set at once). On CUDA (`--device cuda`) it is `torch.cuda.max_memory_allocated`.

The NF4 training peak is its base plus one layer's transient dequantization inside torchao's
`linear_nf4` (forward and backward each dequantize the current layer only; measured here at about
70-80 MiB for one 2048 x 2048 layer on CPU), a constant that does not grow with depth, while the
bf16 base grows by 8 MiB per layer.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys

MiB = 2**20


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    """Return freed heap pages to the OS (glibc), so RSS shows live memory, not allocator cache."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def run_variant(base: str, dim: int, layers: int, tokens: int, steps: int, device: str) -> dict:
    import torch
    from torch import nn
    from torchao.quantization import to_nf4

    from tune.peft import LoraConfig, apply_lora, count_parameters, trainable_parameters

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cuda = device == "cuda"

    def mem() -> int:
        return torch.cuda.memory_allocated() if cuda else _rss_kib("VmRSS") * 1024

    def peak() -> int:
        return torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024

    def reset() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            _trim()
            _reset_peak()

    x = torch.randn(tokens, dim, dtype=torch.bfloat16, device=device)
    baseline = mem()
    reset()
    model = nn.Sequential()
    for _ in range(layers):
        linear = nn.Linear(dim, dim, bias=False, dtype=torch.bfloat16, device=device)
        if base == "nf4":
            linear.weight = nn.Parameter(to_nf4(linear.weight.detach()), requires_grad=False)
        model.append(linear)
    if not cuda:
        _trim()
    base_bytes = mem() - baseline
    build_peak = peak() - baseline
    apply_lora(model, LoraConfig(r=16, alpha=32.0, targets="all-linear", head_names=()))
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-3)
    reset()
    for _ in range(steps):
        loss = model(x).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    storage = 0  # what the base's tensors hold, counted from their (inner) storages
    for linear in model:
        w = linear.weight
        inner = [getattr(w, n) for n in w.__tensor_flatten__()[0]] if base == "nf4" else [w]
        storage += sum(t.untyped_storage().nbytes() for t in inner)
    return {
        "base": base,
        "storage_mib": storage / MiB,
        "base_mib": base_bytes / MiB,
        "build_peak_mib": build_peak / MiB,
        "train_peak_mib": (peak() - baseline) / MiB,
        "trainable": count_parameters(model).trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["bf16", "nf4"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        result = run_variant(
            args.variant, args.dim, args.layers, args.tokens, args.steps, args.device
        )
        print(json.dumps(result))
        return
    results = []
    for variant in ("bf16", "nf4"):
        cmd = [sys.executable, __file__, "--variant", variant]
        for flag in ("dim", "layers", "tokens", "steps", "device"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        # Large blocks straight from mmap: freed memory leaves RSS at once, so RSS tracks live memory
        # instead of glibc's heap cache (whose size depends on fragmentation, not on the model).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    params = args.layers * args.dim * args.dim
    print(f"\nLoRA r=16 on {args.layers} x [{args.dim}, {args.dim}] linears ({params / 1e6:.1f}M base "
          f"parameters), {args.tokens} tokens, {args.steps} AdamW steps, {args.device}")  # fmt: skip
    print(
        f"{'base':<6} {'tensors MiB':>11} {'base MiB':>9} {'train peak MiB':>15} {'trainable':>10}"
    )
    for r in results:
        print(
            f"{r['base']:<6} {r['storage_mib']:>11.1f} {r['base_mib']:>9.1f} {r['train_peak_mib']:>15.1f} "
            f"{r['trainable']:>10,}"
        )
    bf16, nf4 = results
    print(
        f"NF4 / bf16: base {nf4['base_mib'] / bf16['base_mib']:.3f}, "
        f"training peak {nf4['train_peak_mib'] / bf16['train_peak_mib']:.3f}"
    )


if __name__ == "__main__":
    main()
