"""Checkpoint load memory and save throughput for a ~0.5B-parameter model (float32 storage).

Load: a fresh subprocess builds the model on the meta device and loads the HF directory with
`load_hf_checkpoint` (shard by shard, `assign=True`), then touches every weight; its peak RSS
(VmHWM of the process image; ru_maxrss is printed too, but on Linux it can carry over the
parent's peak through exec, so the parent frees its copy of the weights before) is reported as a ratio to the weights' size, with and without the interpreter's own
baseline (Python + torch, measured in the same process before loading). The reference row does the
same with `safetensors.torch.load_file` + `load_state_dict(assign=True)`.

Save: MB/s of `save_hf_checkpoint` (page cache, and with fsync) next to `safetensors.torch.save_file`.

Usage: python benchmarks/checkpoint/bench_load_save.py [--layers 30] [--dim 4096] [--shard 2GB]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

GOAL = 1.3


def build_model(layers: int, dim: int) -> nn.Module:
    """A plain stack of bias-free square nn.Linear layers (no tune.models import)."""
    return nn.Sequential(*(nn.Linear(dim, dim, bias=False) for _ in range(layers)))


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak of this process image), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_load(directory: str, layers: int, dim: int, method: str) -> None:
    """Runs in a fresh process: load into a meta model, touch the weights, print JSON."""
    from safetensors.torch import load_file

    from tune.checkpoint import load_hf_checkpoint

    torch.set_num_threads(1)
    with torch.device("meta"):
        model = build_model(layers, dim)
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    if method == "tune":
        load_hf_checkpoint(model, directory, key_map=lambda k: k.removeprefix("model."))
    else:
        state = {}
        for path in sorted(Path(directory).glob("*.safetensors")):
            state.update({k.removeprefix("model."): v for k, v in load_file(path).items()})
        model.load_state_dict(state, assign=True)
        del state
    checksum = sum(float(p.float().sum()) for p in model.parameters())  # every page resident
    elapsed = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"baseline_mb": baseline, "peak_mb": peak, "ru_maxrss_mb": maxrss}
    print(json.dumps({**result, "seconds": elapsed, "sum": checksum}))


def _load_in_subprocess(directory: Path, layers: int, dim: int, method: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(directory), "--layers", str(layers),
           "--dim", str(dim), "--method", method]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--shard", default="2GB")
    parser.add_argument("--child")
    parser.add_argument("--method", default="tune")
    args = parser.parse_args()
    if args.child:
        child_load(args.child, args.layers, args.dim, args.method)
        return

    from safetensors.torch import save_file

    from tune.checkpoint import save_hf_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    state = {}
    for i in range(args.layers):
        state[f"model.{i}.weight"] = torch.randn(args.dim, args.dim)
    n_params = sum(v.numel() for v in state.values())
    weights_mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
    print(f"model: {args.layers} x Linear({args.dim}, {args.dim}), {n_params / 1e6:.0f}M params, "
          f"float32 storage, {weights_mb:.0f} MiB of weights, max shard {args.shard}")  # fmt: skip

    work = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    try:
        saves: dict[str, list[float]] = {"tune": [], "tune+fsync": [], "safetensors.save_file": []}
        for _ in range(2):  # alternate A B C A B C
            for name in saves:
                out = work / name.replace("+", "_")
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                if name == "safetensors.save_file":
                    out.mkdir()
                    save_file(state, out / "model.safetensors")
                else:
                    save_hf_checkpoint(
                        out, state, max_shard_size=args.shard, fsync=name == "tune+fsync"
                    )
                saves[name].append(weights_mb / (time.perf_counter() - start))
        del state

        loads = {
            m: _load_in_subprocess(work / "tune", args.layers, args.dim, m)
            for m in ("tune", "safetensors")
        }
        print()
        header = ["load (fresh process, meta model)", "VmHWM MiB", "VmHWM / weights",
                  "(VmHWM - baseline) / weights", "ru_maxrss / weights", "s"]  # fmt: skip
        header[0] = header[0].ljust(42)
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
        labels = {
            "tune": "tune load_hf_checkpoint",
            "safetensors": "safetensors load_file + assign (reference)",
        }
        for method, r in loads.items():
            cells = [labels[method], f"{r['peak_mb']:.0f}", f"{r['peak_mb'] / weights_mb:.2f}",
                     f"{(r['peak_mb'] - r['baseline_mb']) / weights_mb:.2f}",
                     f"{r['ru_maxrss_mb'] / weights_mb:.2f}", f"{r['seconds']:.1f}"]  # fmt: skip
            widths = [max(len(h), len(c)) for c, h in zip(cells, header, strict=True)]
            padded = [cells[0].ljust(widths[0])]
            padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            print("| " + " | ".join(padded) + " |")
        assert loads["tune"]["sum"] == loads["safetensors"]["sum"], "loaded values differ"
        ratio = loads["tune"]["peak_mb"] / weights_mb
        print(
            f"goal: peak / weights <= {GOAL}: {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.2f})"
        )
        print()
        print("| save                           | best MB/s | ratio to safetensors.save_file |")
        print("| ------------------------------ | --------- | ------------------------------ |")
        ref = max(saves["safetensors.save_file"])
        for name, rates in saves.items():
            print(f"| {name:<30} | {max(rates) * 1.048576:>9.0f} | {max(rates) / ref:>30.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
