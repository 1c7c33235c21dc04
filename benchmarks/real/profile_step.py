"""Where a training step's time goes: tune's SmolLM2 step, LoRA on padding-free and packed rows
and full fine-tuning.

Runs the ``sft`` recipe in process on the real-model fixture of ``nox -s bench -- real``
(``bench_results/peers_real/fixture``: SmolLM2-135M-Instruct, its tokenizer, 1,200 instruction
rows) with the benchmark's settings (LoRA r=8 on every linear layer or full fine-tuning, AdamW,
global batch 4, max length 512, float32), each variant in a fresh process, and profiles the measured steps with
``torch.profiler`` (after the warm-up steps). It reports, per variant:

- real tokens per step, ms per step and ms per 1,000 real tokens;
- the step split into forward (with the loss), backward and optimizer (the profiler's
  ``Optimizer.step`` range and the autograd engine's node evaluations);
- self CPU time by op class (matmuls, attention, loss, element-wise/norm/optimizer math,
  copies/indexing, and other: autograd and Python overhead, everything unmatched);
- the ten ops with the most self CPU time;
- peak RSS, and peak RSS per real token of a step above the process's RSS before training.

    python benchmarks/real/profile_step.py [--fixture DIR] [--warmup 2] [--steps 4] [--threads 2]
        [--variants unpacked packed full]

Writes ``bench_results/peers_real/profile.md`` (and ``profile.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "benchmarks" / "peers" / "tune_sft_bench.yaml"
OUT = ROOT / "bench_results" / "peers_real"

# Op classes by name (self CPU time). The first match wins.
OP_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::_grouped_mm",
                "aten::linear", "mkldnn")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("loss (CE, log-softmax)", ("softmax", "cross_entropy", "nll_loss", "logsumexp")),
    ("copies / indexing", ("aten::copy_", "aten::index", "aten::cat", "aten::gather",
                           "aten::scatter", "aten::clone", "aten::contiguous", "aten::_to_copy",
                           "aten::embedding", "aten::fill_", "aten::zero_", "aten::empty")),
    ("element-wise / norm / optimizer math", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu",
                             "aten::rsqrt", "aten::pow", "aten::mean", "aten::sum", "aten::neg",
                             "aten::sigmoid", "aten::where", "aten::_foreach", "aten::sqrt",
                             "aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::maximum",
                             "aten::clamp", "aten::exp", "aten::norm", "aten::linalg_vector")),
)  # fmt: skip


def op_class(name: str) -> str:
    """The class of an op name (``other`` when none matches)."""
    for label, needles in OP_CLASSES:
        if any(needle in name for needle in needles):
            return label
    return "other"


VARIANTS = {  # name: (label, packed rows, training method)
    "unpacked": ("padding-free", False, "lora"),
    "packed": ("packed", True, "lora"),
    "full": ("full, padding-free", False, "full"),
}


def profile_variant(fixture: Path, variant: str, warmup: int, steps: int, work: Path) -> dict:
    """Run the recipe with the profiler on steps ``warmup + 1 .. warmup + steps`` (this process)."""
    label, packed, method = VARIANTS[variant]
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    import tune.train.driver as driver
    from tune_testing import run_in_process

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    prof = profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
    )
    rss_before: list[float] = []
    original_run = driver.TrainingDriver.run

    def profiled_run(self: Any, step_fn: Any, start_step: int = 0) -> Any:
        def step(i: int) -> Any:
            out = step_fn(i)
            prof.step()
            return out

        rss_before.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        with prof:
            return original_run(self, step, start_step)

    driver.TrainingDriver.run = profiled_run  # type: ignore[method-assign]
    fx = json.loads((fixture / "fixture.json").read_text())
    out = work / variant
    overrides = [
        f"model.checkpoint_dir={fixture / 'model'}",
        f"data.max_seq_len={fx.get('max_seq_len', 512)}",
        f"data.source={fixture / 'data.jsonl'}",
        f"data.packing={'true' if packed else 'false'}",
        f"training.method={method}",
        f"training.max_steps={warmup + steps}",
        f"checkpointing.output_dir={out}",
    ]
    run_in_process("sft", str(CONFIG), overrides)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = sorted((r for r in records if "loss" in r), key=lambda r: r["step"])[warmup:]
    step_s = sum(float(r["step_time_s"]) for r in measured) / len(measured)
    tokens = sum(float(r["tokens_per_s"]) * float(r["step_time_s"]) for r in measured)
    tokens /= len(measured)

    by_class: dict[str, float] = defaultdict(float)
    ops: list[tuple[str, float]] = []
    backward = optimizer = 0.0
    for event in prof.key_averages():
        if event.key.startswith("autograd::engine::evaluate_function"):
            backward += event.cpu_time_total / 1e3 / steps
        elif event.key.startswith("Optimizer.step#"):
            optimizer += event.cpu_time_total / 1e3 / steps
        self_ms = event.self_cpu_time_total / 1e3 / steps  # every event: the sum is the step
        if self_ms > 0:
            by_class[op_class(event.key)] += self_ms
            ops.append((event.key, self_ms))
    ops.sort(key=lambda kv: -kv[1])
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "variant": label,
        "tokens_per_step": tokens,
        "step_ms": step_s * 1e3,
        "ms_per_1k_tokens": step_s * 1e3 / tokens * 1e3,
        "phases_ms": {
            "forward + loss": step_s * 1e3 - backward - optimizer,
            "backward": backward,
            "optimizer": optimizer,
        },
        "classes_ms": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
        "top_ops_ms": ops[:10],
        "rss_before_gib": rss_before[0] if rss_before else None,
        "rss_peak_gib": rss_peak,
        "loss_first": float(measured[0]["loss"]),
    }


def report(results: list[dict], args: argparse.Namespace) -> str:
    """The markdown report."""
    fixture = json.loads((args.fixture / "fixture.json").read_text())
    lines = [
        f"# Where tune's training step goes: {args.fixture.name} "
        f"({fixture['parameters'] / 1e6:.1f}M parameters, vocab {fixture['vocab_size']}), "
        f"LoRA r=8 or full fine-tuning, batch 4, max length {fixture.get('max_seq_len', 512)}",
        "",
        f"{args.threads} threads, float32, the benchmark fixture; mean of {args.steps} profiled "
        f"steps after {args.warmup} warm-up steps, each variant in a fresh process "
        "(`python benchmarks/real/profile_step.py`). The profiler adds some overhead to every op.",
        "",
        "| | " + " | ".join(r["variant"] for r in results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("real tokens per step", [f"{r['tokens_per_step']:.0f}" for r in results])
    row("ms per step", [f"{r['step_ms']:.0f}" for r in results])
    row("ms per 1k real tokens", [f"{r['ms_per_1k_tokens']:.0f}" for r in results])
    for phase in results[0]["phases_ms"]:
        row(f"phase: {phase} (ms/step)", [f"{r['phases_ms'][phase]:.0f}" for r in results])
    classes = list(dict.fromkeys(c for r in results for c in r["classes_ms"]))
    for c in classes:
        row(
            f"self time: {c} (ms/step, share)",
            [
                f"{r['classes_ms'].get(c, 0):.0f} ({r['classes_ms'].get(c, 0) / r['step_ms']:.0%})"
                for r in results
            ],
        )
    row("peak RSS (GiB)", [f"{r['rss_peak_gib']:.2f}" for r in results])
    row(
        "peak RSS above pre-training RSS, per real token of a step (KiB)",
        [
            f"{(r['rss_peak_gib'] - r['rss_before_gib']) * 2**20 / r['tokens_per_step']:.0f}"
            for r in results
        ],
    )
    for r in results:
        lines += ["", f"Top ops by self CPU time, {r['variant']} (ms per step):", ""]
        lines += [f"- `{name}`: {ms:.1f}" for name, ms in r["top_ops_ms"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, default=OUT / "fixture")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.fixture / "fixture.json").is_file():
        print(f"no fixture at {args.fixture}: run `nox -s bench -- real` first (it makes it)")
        return 1
    work = args.work or args.out / "profile-runs"
    if args.variant:  # a child: one variant, its result as JSON on the last line
        result = profile_variant(args.fixture, args.variant, args.warmup, args.steps, work)
        print("RESULT " + json.dumps(result))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    results = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--fixture", str(args.fixture),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--work", str(work)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        got = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not got:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
            return 1
        results.append(json.loads(got[-1].removeprefix("RESULT ")))
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, args)
    (args.out / "profile.md").write_text(text)
    (args.out / "profile.json").write_text(json.dumps(results, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
