"""Peak memory and step time of one 4k-32k-token sequence on the CPU, by configuration.

A tiny tune.models Llama (2 layers, hidden 128, vocab 2048; tune_testing.long_sequence) takes one
AdamW step on a single sequence of each length, in three configurations:

- plain: no checkpointing, cross-entropy on the [T, V] logits;
- ckpt+chunked: every block checkpointed (tune.dist.apply_activation_checkpointing) and
  tune.train's fused_linear_cross_entropy on the hidden states (no [T, V] logits);
- cp2+ckpt+chunked: the same over 2 gloo ranks (torch.multiprocessing), each holding a zig-zag
  half of the sequence, attention by tune.dist's ring (context_parallel_attention); peak of rank 0.

Peak bytes: parameters, buffers and AdamW state alive when the step starts plus the peak of the
CPU allocator's traffic during it (torch.profiler profile_memory; tune_testing.memory, the method
of the ``tune plan`` accuracy test). Linearity: bytes per added token between consecutive lengths,
and their spread (largest / smallest; 1.00 = exactly linear). Then a few steps at the longest
length lower the loss of a held-out sequence of the same Markov chain.

Writes bench_results/dist/long_sequence.json.

Usage: python benchmarks/dist/bench_long_sequence.py [--lengths 4096 8192 16384 32768]
       [--train-steps 5] [--no-plain] [--no-cp]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tune_testing.long_sequence import (
    HF_CONFIG,
    LongSequenceRun,
    increments_per_token,
    linearity_spread,
    markov_batch,
)

OUT = Path(__file__).resolve().parents[2] / "bench_results" / "dist" / "long_sequence.json"
CONFIGS = {"plain": (False, False), "ckpt+chunked": (True, True)}  # (checkpointing, chunked)


def measure(run: LongSequenceRun, seq_len: int) -> dict[str, Any]:
    """Step seconds (the second step) and peak bytes (a third, profiled step) at ``seq_len``."""
    batch = markov_batch(seq_len, seed=1)
    run.step(batch)  # warm-up: AdamW state
    _, seconds = run.timed_step(batch)
    peak = run.peak_bytes(batch)
    return {"seq_len": seq_len, "peak_bytes": peak, "bytes_per_token": peak / seq_len,
            "step_s": seconds}  # fmt: skip


def _cp_worker(rank: int, port: int, lengths: list[int], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = []
        for seq_len in lengths:
            run = LongSequenceRun.build(checkpointing=True, chunked=True, cp_group=dist.group.WORLD)
            rows.append(measure(run, seq_len))
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def measure_cp(lengths: list[int]) -> list[dict[str, Any]]:
    """Rank 0's rows of the 2-rank context-parallel run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "cp.json")
        mp.spawn(_cp_worker, args=(port, lengths, out), nprocs=2, join=True)
        rows: list[dict[str, Any]] = json.loads(Path(out).read_text())
    return rows


def train(seq_len: int, steps: int) -> dict[str, Any]:
    """Held-out loss before and after ``steps`` ckpt+chunked steps on one ``seq_len`` sequence."""
    run = LongSequenceRun.build(checkpointing=True, chunked=True)
    batch, held_out = markov_batch(seq_len, seed=1), markov_batch(seq_len, seed=2)
    before = run.eval_loss(held_out)
    losses = [run.step(batch) for _ in range(steps)]
    return {"seq_len": seq_len, "steps": steps, "train_losses": losses,
            "held_out_before": before, "held_out_after": run.eval_loss(held_out)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain configuration")
    parser.add_argument("--no-cp", action="store_true", help="skip the 2-rank CP configuration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lengths = sorted(args.lengths)

    results: dict[str, list[dict[str, Any]]] = {}
    for name, (checkpointing, chunked) in CONFIGS.items():
        if name == "plain" and args.no_plain:
            continue
        results[name] = []
        for seq_len in lengths:
            run = LongSequenceRun.build(checkpointing=checkpointing, chunked=chunked)
            results[name].append(measure(run, seq_len))
    if not args.no_cp:
        results["cp2+ckpt+chunked"] = measure_cp(lengths)

    model = (f"{HF_CONFIG['num_hidden_layers']} layers, hidden {HF_CONFIG['hidden_size']}, "
             f"vocab {HF_CONFIG['vocab_size']}")  # fmt: skip
    print(f"one AdamW step on one sequence, tiny Llama ({model}), CPU, 1 thread per process")
    print(f"{'seq len':>8}  {'config':<18}{'peak MiB':>10}{'bytes/token':>13}{'step s':>9}")
    for name, rows in results.items():
        for r in rows:
            print(f"{r['seq_len']:>8}  {name:<18}{r['peak_bytes'] / 2**20:>10.1f}"
                  f"{r['bytes_per_token']:>13,.0f}{r['step_s']:>9.2f}")  # fmt: skip
    linearity = {}
    for name, rows in results.items():
        peaks = [r["peak_bytes"] for r in rows]
        if len(peaks) >= 3:
            inc = increments_per_token(lengths, peaks)
            linearity[name] = {"increments_per_token": inc,
                               "spread": linearity_spread(lengths, peaks)}  # fmt: skip
            print(
                f"{name}: bytes per added token {', '.join(f'{i:,.0f}' for i in inc)}; "
                f"spread {linearity[name]['spread']:.3f} (1.000 = linear)"
            )

    start = time.perf_counter()
    training = train(lengths[-1], args.train_steps)
    print(f"{args.train_steps} ckpt+chunked steps at {lengths[-1]} tokens "
          f"({time.perf_counter() - start:.0f} s): train loss "
          f"{' -> '.join(f'{x:.3f}' for x in training['train_losses'])}; held-out loss "
          f"{training['held_out_before']:.3f} -> {training['held_out_after']:.3f}")  # fmt: skip

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": HF_CONFIG, "results": results, "linearity": linearity,
                               "training": training}, indent=2))  # fmt: skip
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
