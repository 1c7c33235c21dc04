"""tune vs torchtune 0.6.1 vs transformers+peft (Trainer): SFT side by side on one CPU fixture.

Run: ``python benchmarks/peers/bench_peers.py [--quick] [--repeats N]`` (``nox -s bench -- peers``
builds the torchtune venv and runs it). Every library runs in a subprocess of its own (torchtune in
its own venv: set ``TUNE_BENCH_TORCHTUNE_PYTHON`` or pass ``--torchtune-python``), one thread,
float32, on the same fixture (fixture.py): a random Llama-3-architecture model (hidden 256, 8
layers, 4 heads, 2 KV heads, intermediate 768, vocab 8192), a byte-level BPE, 2,000 synthetic
Alpaca rows; batch 4, max length 512, AdamW lr 2e-4 constant, clip 1.0, LoRA r=8 alpha=16 on
q/k/v/o + gate/up/down. The batches are saved once and every library trains on them in order;
the full fine-tune loss curves must agree (checked). Runs alternate between libraries (the order
rotates per row and repeat); with ``--repeats`` > 1 the fastest run of each library is kept.

Writes ``bench_results/peers/{table.md,results.json,peers.png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_TORCHTUNE_PYTHON = ROOT / ".nox" / "bench-torchtune" / "bin" / "python"
ROWS = [("lora", False, "LoRA"), ("lora", True, "LoRA packed"), ("full", False, "full")]
LIBRARIES = {
    "tune": "run_tune.py",
    "torchtune": "run_torchtune.py",
    "transformers+peft": "run_hf.py",
}
PEERS = ["torchtune", "transformers+peft"]
LOSS_RTOL = 1e-3  # full fine-tune curves: same weights, same batches, float32


def _env() -> dict[str, str]:
    return dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                              timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}), log {log}:\n{tail}")


def matmul_rate(log: Path) -> float:
    """FLOP/s of a 1-thread fp32 matmul, measured now in a fresh interpreter."""
    _run([sys.executable, str(HERE / "matmul_rate.py")], log, 300)
    return float(json.loads(log.read_text().strip().splitlines()[-1])["flops_per_s"])


def flops_per_token(fixture: dict[str, Any], seq_len: int) -> float:
    """PaLM model FLOPs of training per token: 6 N + 12 L T D (N: matmul weights incl. LM head)."""
    d, layers, vocab = fixture["hidden_size"], fixture["num_hidden_layers"], fixture["vocab_size"]
    n = fixture["parameters"] - vocab * d  # embeddings excluded; output head included
    return 6.0 * n + 12.0 * layers * seq_len * d


def summarize(result: dict, saved: dict, fixture: dict, warmup: int, rate: float) -> dict:
    """tokens/s (non-padding), mean step time, MFU over the measured steps of one run."""
    idx = range(warmup, len(result["step_times_s"]))
    seconds = sum(result["step_times_s"][i] for i in idx)
    tokens = sum(saved["non_padding_tokens"][i] for i in idx)
    flops = sum(
        saved["non_padding_tokens"][i] * flops_per_token(fixture, saved["seq_lens"][i]) for i in idx
    )
    return {
        **result,
        "tokens_per_s": tokens / seconds,
        "step_time_s": seconds / len(idx),
        "mfu": flops / seconds / rate,
        "last_loss": result["losses"][-1],
    }


def loss_checks(best: dict[str, dict[str, dict]], digests: dict[str, list[str]]) -> list[dict]:
    """Per row and peer: same batches as saved, the largest loss difference to tune, at step 1."""
    checks = []
    for _, _, label in ROWS:
        runs = best.get(label, {})
        if "tune" not in runs:
            continue
        ref = runs["tune"]["losses"]
        for peer in PEERS:
            if peer not in runs:
                continue
            other = runs[peer]["losses"]
            rel = [abs(a - b) / abs(a) for a, b in zip(ref, other, strict=True)]
            checks.append({
                "row": label, "peer": peer, "max_rel_diff": max(rel), "step1_rel_diff": rel[0],
                "same_batches": runs[peer]["digests"] == runs["tune"]["digests"] == digests[label],
            })  # fmt: skip
    return checks


def write_table(out: Path, best: dict, checks: list[dict], meta: dict) -> str:
    """table.md: the rows, tune's ratios to the peers, and the loss-agreement checks."""
    lines = [
        f"# Peer SFT benchmark ({meta['mode']}: {meta['warmup']} warm-up + {meta['measured']} "
        f"measured steps, 1 thread, float32)",
        "",
        f"fp32 matmul rate measured in this run: {meta['matmul_gflops']:.1f} GFLOP/s "
        f"(before {meta['matmul_before'] / 1e9:.1f}, after {meta['matmul_after'] / 1e9:.1f}); "
        f"fixture {meta['fixture']['parameters'] / 1e6:.2f}M parameters, BPE vocabulary "
        f"{meta['fixture']['tokenizer_vocab']} (model vocab {meta['fixture']['vocab_size']}).",
        "",
        "| run | library | tokens/s | step time (s) | peak RSS (GB) | last-step loss | MFU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for _, _, label in ROWS:
        for lib in LIBRARIES:
            r = best.get(label, {}).get(lib)
            if r is None:
                lines.append(f"| {label} | {lib} | not run | | | | |")
                continue
            lines.append(
                f"| {label} | {lib} | {r['tokens_per_s']:.0f} | {r['step_time_s']:.3f} | "
                f"{r['peak_rss_bytes'] / 1e9:.2f} | {r['last_loss']:.4f} | {r['mfu']:.0%} |"
            )
    lines += ["", "## tune against the peers (goal: >= 1.3x the faster peer, <= the lower RSS)", ""]
    lines += [
        "| run | tune / faster peer tokens/s | tune / lower peer peak RSS |",
        "| --- | ---: | ---: |",
    ]
    for _, _, label in ROWS:
        runs = best.get(label, {})
        peers = [runs[p] for p in PEERS if p in runs]
        if "tune" not in runs or not peers:
            continue
        speed = runs["tune"]["tokens_per_s"] / max(p["tokens_per_s"] for p in peers)
        rss = runs["tune"]["peak_rss_bytes"] / min(p["peak_rss_bytes"] for p in peers)
        lines.append(f"| {label} | {speed:.2f}x | {rss:.2f}x |")
    lines += [
        "",
        "## Same data, same curves (relative loss difference to tune)",
        "",
        "| run | peer | same batches | step 1 | max over all steps |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for c in checks:
        lines.append(
            f"| {c['row']} | {c['peer']} | {c['same_batches']} | {c['step1_rel_diff']:.1e} | "
            f"{c['max_rel_diff']:.1e} |"
        )
    lines += [
        "",
        "tokens/s counts non-padding tokens over the measured steps; MFU uses the PaLM count "
        "6N + 12·L·T·D per token (N excludes the embedding, T is the batch row length) for LoRA "
        "too, over the matmul rate above. LoRA curves differ after step 1 only through the "
        "random init of the A matrices (B starts at zero in all three). tune's step time "
        "includes its own streaming tokenization/packing; the peers get the saved batches. "
        "Unpacked rows: tune trains each batch padding-free (data.padding_free, auto on the "
        "CPU: the real tokens laid end to end, one document per example), the peers compute on "
        "the padded batches as their trainers give them; the digests are of the padded batches.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def write_chart(out: Path, best: dict) -> Path | None:
    """peers.png: tokens/s and peak RSS bars per run and library."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return None
    labels = [label for _, _, label in ROWS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(LIBRARIES)
    for k, lib in enumerate(LIBRARIES):
        xs = [i + (k - 1) * width for i in range(len(labels))]
        tps = [best.get(lb, {}).get(lib, {}).get("tokens_per_s", 0) for lb in labels]
        rss = [best.get(lb, {}).get(lib, {}).get("peak_rss_bytes", 0) / 1e9 for lb in labels]
        axes[0].bar(xs, tps, width, label=lib)
        axes[1].bar(xs, rss, width, label=lib)
    for ax, title in zip(axes, ["non-padding tokens/s (higher is better)",
                                "peak RSS, GB (lower is better)"], strict=True):  # fmt: skip
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(LIBRARIES))
    fig.suptitle("SFT on one CPU thread, float32: tune vs torchtune vs transformers+peft")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = out / "peers.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 3 measured steps")
    parser.add_argument("--repeats", type=int, default=1, help="runs per library and row")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "peers")
    parser.add_argument("--torchtune-python", type=Path,
                        default=Path(os.environ.get("TUNE_BENCH_TORCHTUNE_PYTHON",
                                                    DEFAULT_TORCHTUNE_PYTHON)))  # fmt: skip
    parser.add_argument("--only", nargs="*", choices=list(LIBRARIES), default=list(LIBRARIES))
    args = parser.parse_args()
    quick = args.quick or os.environ.get("TUNE_BENCH_QUICK") == "1"
    warmup, measured = (2, 3) if quick else (3, 20)
    steps = warmup + measured
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "runs", ignore_errors=True)
    pythons = {"tune": sys.executable, "transformers+peft": sys.executable}
    if args.torchtune_python.is_file():
        pythons["torchtune"] = str(args.torchtune_python)
    else:
        print(f"torchtune skipped: no interpreter at {args.torchtune_python} (run `nox -s bench` "
              "or set TUNE_BENCH_TORCHTUNE_PYTHON to a venv with torchtune 0.6.1)")  # fmt: skip
    libs = [lib for lib in LIBRARIES if lib in args.only and lib in pythons]

    start = time.perf_counter()
    fixture_dir = out / "fixture"
    _run([sys.executable, str(HERE / "fixture.py"), str(fixture_dir), "--steps", str(steps)],
         out / "logs" / "fixture.log", 600)  # fmt: skip
    fixture = json.loads((fixture_dir / "fixture.json").read_text())
    import torch  # after the subprocesses above: the orchestrator itself stays light

    saved = {}
    for packed in (False, True):
        data = torch.load(fixture_dir / f"batches_{'packed' if packed else 'unpacked'}.pt")
        data["seq_lens"] = [b["tokens"].shape[1] for b in data["batches"]]
        saved[packed] = data
    rate_before = matmul_rate(out / "logs" / "matmul_before.log")

    best: dict[str, dict[str, dict]] = {}
    all_runs = []
    for repeat in range(args.repeats):
        for row_index, (method, packed, label) in enumerate(ROWS):
            shift = (repeat + row_index) % len(libs)
            for lib in libs[shift:] + libs[:shift]:
                work = out / "runs" / label.replace(" ", "_") / lib.replace("+", "_") / f"r{repeat}"
                cmd = [pythons[lib], str(HERE / LIBRARIES[lib]), "--fixture", str(fixture_dir),
                       "--method", method, "--steps", str(steps), "--work-dir", str(work)]  # fmt: skip
                if packed:
                    cmd.append("--packed")
                t0 = time.perf_counter()
                _run(cmd, work / "log.txt", 3600)
                result = json.loads((work / "result.json").read_text())
                result.update(row=label, repeat=repeat, wall_s=time.perf_counter() - t0)
                all_runs.append(result)
                print(f"{label:12s} {lib:18s} r{repeat}: {result['wall_s']:.0f} s wall, "
                      f"last loss {result['losses'][-1]:.4f}", flush=True)  # fmt: skip
    rate_after = matmul_rate(out / "logs" / "matmul_after.log")
    rate = (rate_before + rate_after) / 2
    for result in all_runs:
        packed = result["row"] == "LoRA packed"
        s = summarize(result, saved[packed], fixture, warmup, rate)
        current = best.setdefault(result["row"], {}).get(result["library"])
        if current is None or s["tokens_per_s"] > current["tokens_per_s"]:
            best[result["row"]][result["library"]] = s

    checks = loss_checks(best, {lb: saved[p]["digests"] for _, p, lb in ROWS})
    meta = {"mode": "quick" if quick else "full", "warmup": warmup, "measured": measured,
            "matmul_gflops": rate / 1e9, "matmul_before": rate_before, "matmul_after": rate_after,
            "fixture": fixture, "repeats": args.repeats,
            "total_wall_s": time.perf_counter() - start}  # fmt: skip
    table = write_table(out, best, checks, meta)
    chart = write_chart(out, best)
    (out / "results.json").write_text(json.dumps({"meta": meta, "best": best, "checks": checks,
                                                  "runs": all_runs}, indent=1))  # fmt: skip
    print(table)
    print(f"wrote {out / 'table.md'}" + (f", {chart}" if chart else ""))
    bad = [c for c in checks if c["row"] == "full" and c["max_rel_diff"] > LOSS_RTOL]
    bad += [c for c in checks if not c["same_batches"] or c["step1_rel_diff"] > LOSS_RTOL]
    if bad:
        print(f"loss curves disagree (rtol {LOSS_RTOL}): {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
