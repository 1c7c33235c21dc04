"""Start-up of `tune run sft` (tiny LoRA config) to its first step, and import times.

Launches `tune run sft --config sft/tiny_cpu_lora` on the tiny assets of `tune_testing` in a
fresh process per repeat, through a small runner that records, without changing the run:
  launch -> first step    wall seconds from starting the process to the driver's first step
  model load              seconds inside `load_pretrained` (building and filling the model)
  start-up excl. load     the first minus the second (the issue's target: <= 2 s)
and which heavy modules were imported by then. The run stops at its first step. Then, in fresh
processes, the cumulative import time (`python -X importtime`) of tune's entry modules.
Numbers, not pass/fail: the median of the repeats, and the ratio to the 2 s target.

    python benchmarks/startup/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tune_testing import make_tiny_assets, tiny_overrides

TARGET_S = 2.0
HEAVY = (
    "transformers", "peft", "torchao", "datasets", "pandas", "pyarrow", "matplotlib", "jinja2",
    "tensorboard", "wandb", "mlflow", "gguf", "sympy", "torch._dynamo",
    "torch.distributed.checkpoint", "torch.distributed.tensor", "torch.distributed.fsdp",
)  # fmt: skip
IMPORTS = ("torch", "tune.recipes.cli", "tune.recipes.sft.loop", "tune.data", "tune.checkpoint",
           "tune.dist", "tune.train", "tune.models", "tune.peft")  # fmt: skip

# Runs the CLI in this process; patches only observe (model load time, first step), then exit.
RUNNER = """
import json, sys, time
import tune.recipes.common.model_loading as loading
import tune.train.driver as driver
load_s = []
original_load = loading.load_pretrained
def timed_load(*args, **kwargs):
    start = time.perf_counter()
    try:
        return original_load(*args, **kwargs)
    finally:
        load_s.append(time.perf_counter() - start)
loading.load_pretrained = timed_load
def first_step(self, step_fn, start_step=0):
    print("STARTUP " + json.dumps({"first_step_wall": time.time(), "model_load_s": sum(load_s),
          "heavy": sorted(m for m in HEAVY if m in sys.modules)}), flush=True)
    raise SystemExit(0)
driver.TrainingDriver.run = first_step
from tune.recipes.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _startup_once(runner: Path, overrides: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    launched = time.time()
    proc = subprocess.run(
        [sys.executable, str(runner), "run", "sft", "--config", "sft/tiny_cpu_lora", *overrides],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STARTUP ")]
    if not lines:
        raise RuntimeError(f"the run did not reach its first step:\n{proc.stderr[-3000:]}")
    got = json.loads(lines[-1].removeprefix("STARTUP "))
    total = got["first_step_wall"] - launched
    return {"total_s": total, "load_s": got["model_load_s"],
            "excl_s": total - got["model_load_s"], "heavy": got["heavy"]}  # fmt: skip


def _import_seconds(module: str) -> float:
    """Seconds of `import module` in a fresh interpreter (`-X importtime`, top-level entries)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # Top-level entries (no nesting) of the statement; the interpreter's own start-up excluded.
    before = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
        check=True,
    ).stderr.count("\n")  # fmt: skip
    total = 0
    for line in proc.stderr.splitlines()[before:]:
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            total += int(parts[1])
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tune-startup-"))
    assets = make_tiny_assets(root / "assets")
    runner = root / "runner.py"
    runner.write_text(f"HEAVY = {HEAVY!r}\n" + RUNNER)
    overrides = tiny_overrides(
        assets, root / "out", "training.max_steps=6", "checkpointing.save_every_n_steps=null",
        "checkpointing.save_merged=false",
    )  # fmt: skip
    _startup_once(runner, overrides)  # warm the file cache and the compiled bytecode
    runs = [_startup_once(runner, overrides) for _ in range(args.repeats)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"tune run sft --config sft/tiny_cpu_lora, {args.repeats} repeats (median [min, max])")
    for key, label in (("total_s", "launch -> first step"), ("load_s", "model load"),
                       ("excl_s", "start-up excl. model load")):  # fmt: skip
        values = [r[key] for r in runs]
        print(f"  {label:<28} {median(key):6.2f} s  [{min(values):.2f}, {max(values):.2f}]")
    print(f"  ratio to the {TARGET_S:.0f} s target (excl. load): {median('excl_s') / TARGET_S:.2f}")
    print(f"  heavy modules imported by the first step: {', '.join(runs[-1]['heavy']) or 'none'}")
    print("import time (cumulative, fresh process, best of 3):")
    torch_s = min(_import_seconds("torch") for _ in range(3))
    for module in IMPORTS:
        seconds = torch_s if module == "torch" else min(_import_seconds(module) for _ in range(3))
        print(f"  {module:<24} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
