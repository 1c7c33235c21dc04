"""torchrun launches for the tune-dist tests: free ports, hard timeouts that kill the process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).parent
WORKER = TESTS_DIR / "dist_worker.py"

LAUNCH_TIMEOUT_S = 240
_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port nobody listens on now (each launch gets its own rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Launch:
    returncode: int
    output: str
    seconds: float


def _clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("TUNE_DIST_TEST_PG_TIMEOUT", "60")
    env.update(extra or {})
    return env


def start(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m torch.distributed.run <args>`` in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        cwd=TESTS_DIR,
        env=_clean_env(extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait(procs: list[subprocess.Popen[str]], timeout: float = LAUNCH_TIMEOUT_S) -> list[Launch]:
    """Wait for launchers; past ``timeout`` kill their whole process groups and fail."""
    begin = time.monotonic()
    results = []
    for proc in procs:
        left = max(1.0, timeout - (time.monotonic() - begin))
        try:
            out, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            raise AssertionError(
                f"torchrun launch hung for more than {timeout:.0f} s and was killed; "
                f"output tail:\n{out[-4000:]}"
            ) from None
        results.append(Launch(proc.returncode, out, time.monotonic() - begin))
    return results


def run_scenarios(
    tmp_path: Path, nproc: int, scenarios: list[str], extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One single-node launch running ``scenarios`` on ``nproc`` ranks; returns rank 0's JSON."""
    out = tmp_path / f"results_{nproc}.json"
    args = [
        "--nnodes", "1", "--nproc_per_node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "--rdzv-id", f"tune-dist-{nproc}", str(WORKER), str(out), *scenarios,
    ]  # fmt: skip
    (launch,) = wait([start(args, extra_env)])
    assert launch.returncode == 0, (
        f"torchrun failed ({launch.returncode}):\n{launch.output[-6000:]}"
    )
    return json.loads(out.read_text())
