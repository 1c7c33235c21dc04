"""Run every benchmark script (benchmarks/<area>/bench_*.py) one after another.

Each script prints its own table of ratios; this runner saves each script's output under
bench_results/<area>/<script>.txt and prints a one-line summary per script. Benchmarks never fail
CI on speed: a script that crashes is reported and the runner exits non-zero.

Usage: python benchmarks/run_all.py [AREA_OR_SCRIPT_SUBSTRING ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT.parent / "bench_results"


def main(argv: list[str]) -> int:
    scripts = sorted(ROOT.glob("*/bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(a in str(s.relative_to(ROOT)) for a in argv)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    failures = []
    for script in scripts:
        rel = script.relative_to(ROOT)
        out_path = RESULTS / rel.parent / f"{script.stem}.txt"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=ROOT.parent
        )
        elapsed = time.perf_counter() - start
        out_path.write_text(
            proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else "")
        )
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"{rel}: {status} in {elapsed:.0f} s -> {out_path.relative_to(ROOT.parent)}")
        print(proc.stdout)
        if proc.returncode != 0:
            failures.append(str(rel))
    if failures:
        print("failed:", ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
