"""Helpers for tests of the ``sft`` recipe: tiny assets, in-process and CLI runs, metric reading.

Shipped so that the integration tests and other packages' recipe tests share one way to make a
run; nothing here is used at training time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.data.synthetic import synthetic_instruction_rows, write_jsonl
from tune.recipes.discovery import find_config
from tune.recipes.tiny_checkpoint import make_tiny_checkpoint

# Linear layers whose sizes are multiples of 16,384 elements, so NF4 (QLoRA) applies to all.
NF4_FRIENDLY_SIZES: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 4,
    "intermediate_size": 256,
}


@dataclass(frozen=True)
class TinyAssets:
    """A tiny base checkpoint and an instruction dataset on disk."""

    checkpoint_dir: Path
    data_file: Path


def make_tiny_assets(root: Path, *, num_rows: int = 240, seed: int = 0) -> TinyAssets:
    """Write a tiny random Llama checkpoint (NF4-friendly sizes) and ``num_rows`` instruction rows."""
    rows = synthetic_instruction_rows(num_rows, seed=seed)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    ckpt = make_tiny_checkpoint(root / "base", tokenizer_text=text, seed=seed, **NF4_FRIENDLY_SIZES)
    data = write_jsonl(rows, root / "data.jsonl")
    return TinyAssets(ckpt, data)


def sft_overrides(assets: TinyAssets, out_dir: Path, *extra: str) -> list[str]:
    """Overrides that point a bundled tiny config at ``assets`` and keep the run short and quiet."""
    return [
        f"model.checkpoint_dir={assets.checkpoint_dir}",
        f"data.source={assets.data_file}",
        f"checkpointing.output_dir={out_dir}",
        "logging.progress_bar=false",
        "logging.loggers=[jsonl]",
        "logging.log_every_n_steps=1",
        "checkpointing.keep_last_n=10",
        *extra,
    ]


def run_sft_in_process(config: str, overrides: list[str]) -> dict[str, Any]:
    """Load a bundled config (or a path) with overrides and run the loop in this process."""
    from tune.recipes.config import load_config
    from tune.recipes.sft.config import SFTConfig
    from tune.recipes.sft.loop import run

    path, _ = find_config(config, "sft")
    return run(load_config(path, SFTConfig, overrides))


def tune_command(config: str, overrides: list[str], nproc: int = 1) -> list[str]:
    """The ``tune run sft`` command line (through ``python -m tune.recipes``)."""
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [
        sys.executable,
        "-m",
        "tune.recipes",
        "run",
        "sft",
        *launch,
        "--config",
        config,
        *overrides,
    ]


def read_metrics(path: Path, key: str = "loss") -> dict[int, float]:
    """``step -> value`` of one metric from a jsonl log (a later line for a step wins)."""
    values: dict[int, float] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if key in record:
            values[int(record["step"])] = float(record[key])
    return values


def run_and_kill_at(command: list[str], metrics: Path, kill_after_step: int, timeout: float) -> int:
    """Start ``command``; SIGKILL it once ``metrics`` records ``kill_after_step``. Returns the step seen."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            steps = read_metrics(metrics)
            if steps and max(steps) >= kill_after_step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return max(steps)
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(
                    f"run ended (exit {proc.returncode}) before step {kill_after_step}:\n{err[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"step {kill_after_step} not reached in {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run_to_end(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` under a hard timeout; raise with its stderr tail if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


# ---- multi-process runs: find the rank processes of a launch and signal one of them ------------

_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables, one OpenMP thread, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def descendant_pids(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (read from ``/proc``; Linux only)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """``rank -> pid`` of the training processes under a launcher (those with RANK set by torchrun)."""
    ranks: dict[int, int] = {}
    for pid in descendant_pids(launcher_pid):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        if b"RANK" in env and b"LOCAL_RANK" in env:
            ranks[int(env[b"RANK"])] = pid
    return ranks


@dataclass
class SignalledRun:
    """What happened to a run signalled at a step: the step seen, exit status and stderr."""

    signalled_at: int
    returncode: int
    stderr: str


def run_and_signal_rank(
    command: list[str],
    metrics: Path,
    at_step: int,
    *,
    ranks: Sequence[int] | None,
    sig: int,
    timeout: float,
    log: Path,
    env: dict[str, str] | None = None,
    grace: float | None = None,
) -> SignalledRun:
    """Start ``command``; once ``metrics`` records ``at_step``, send ``sig`` to some ranks.

    Args:
        command: a ``tune run`` command line (with launch flags when ``ranks`` is given).
        metrics: the jsonl metrics file the run writes (rank 0 writes it after each step).
        at_step: signal once this step is recorded.
        ranks: the ranks to signal (pids found under the launcher); None signals the launcher.
        sig: the signal number (SIGKILL, SIGTERM, ...).
        timeout: hard limit in seconds for the whole run; on expiry every process is killed
            and ``subprocess.TimeoutExpired`` is raised.
        log: file receiving the run's stderr (read back into the result).
        env: environment (default ``clean_env()``).
        grace: also kill everything if the run has not ended this many seconds after the signal.
    """
    with open(log, "w") as err:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env or clean_env(),
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    seen = -1
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            steps = read_metrics(metrics)
            if steps and max(steps) >= at_step:
                seen = max(steps)
                if ranks is None:
                    os.kill(proc.pid, sig)
                else:
                    pids = rank_pids(proc.pid)
                    if not set(ranks) <= set(pids):
                        raise RuntimeError(f"ranks {ranks} not all found under {proc.pid}: {pids}")
                    for rank in ranks:
                        os.kill(pids[rank], sig)
                break
            time.sleep(0.02)
        if seen < 0:
            text = log.read_text()[-3000:]
            raise RuntimeError(f"step {at_step} not reached (exit {proc.poll()}):\n{text}")
        left = deadline - time.monotonic()
        proc.wait(timeout=max(1.0, left if grace is None else min(left, grace)))
        return SignalledRun(seen, proc.returncode, log.read_text())
    finally:
        kill_tree(proc)


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc`` and every descendant (torchrun starts each rank in its own session)."""
    for pid in [*descendant_pids(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_launch(
    command: list[str], timeout: float, log: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end under a hard timeout that also kills every rank it started.

    Returns the completed process with stdout and stderr (stderr also written to ``log``);
    raises ``TimeoutError`` (after killing the whole tree) when ``timeout`` passes.
    """
    out_log = log.with_suffix(".stdout")
    with open(log, "w") as err, open(out_log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env or clean_env())
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"{' '.join(command)} still running after {timeout} s") from exc
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    return subprocess.CompletedProcess(
        command, proc.returncode, out_log.read_text(), log.read_text()
    )
