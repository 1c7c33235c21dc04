"""Process helpers for tests of launched runs: find torchrun's rank processes, signal or kill them.

A test starts a launch (``torchrun ...`` or any command that starts one), waits until the run has
made some progress, then kills or signals the launcher or chosen ranks, all under hard timeouts
that kill the whole process tree. Progress is whatever a callable reports (the last step a
metrics file records, the number of saved checkpoints), so nothing here knows a file format::

    saved = lambda: len(list(out.glob("checkpoints/step_*")))
    killed = run_and_signal_rank(command, saved, 2, ranks=[1], sig=signal.SIGKILL,
                                 timeout=240, log=tmp / "stderr.txt")
    assert killed.returncode != 0

Linux only (``/proc``); nothing here is used at training time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The variables torchrun sets for its ranks: a test's own runs must not inherit them.
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables, one OpenMP thread, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def descendant_pids(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (read from ``/proc``)."""
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
    """``rank -> pid`` of the processes under a launcher that have ``RANK`` and ``LOCAL_RANK``
    in their environment (torchrun's ranks, not the launcher itself)."""
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


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc`` and every descendant (torchrun starts each rank in its own session)."""
    for pid in [*descendant_pids(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_to_end(
    command: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` under a hard timeout; raise ``RuntimeError`` with its stderr tail if it
    fails. ``env`` defaults to ``clean_env()``."""
    result = subprocess.run(
        command, capture_output=True, text=True, env=env or clean_env(), timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


def run_launch(
    command: list[str], timeout: float, log: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end under a hard timeout that also kills every rank it started.

    Returns the completed process with stdout and stderr (stderr also written to ``log``, stdout
    to ``log`` with the suffix ``.stdout``); raises ``TimeoutError`` after killing the whole tree
    when ``timeout`` seconds pass. ``env`` defaults to ``clean_env()``.
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


def run_and_kill_at(
    command: list[str], progress: Callable[[], int], at: int, timeout: float
) -> int:
    """Start ``command`` in a new session; SIGKILL its whole process group once ``progress()``
    reaches ``at``. Returns the progress seen.

    Raises ``RuntimeError`` (with the stderr tail) if the run ends first, ``TimeoutError`` if
    ``at`` is not reached within ``timeout`` seconds.
    """
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            seen = progress()
            if seen >= at:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return seen
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(
                    f"run ended (exit {proc.returncode}) at progress {seen} before {at}:\n"
                    f"{err[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"progress {at} not reached in {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@dataclass
class SignalledRun:
    """What happened to a run signalled at some progress: the progress seen, exit status, stderr."""

    signalled_at: int
    returncode: int
    stderr: str


def run_and_signal_rank(
    command: list[str],
    progress: Callable[[], int],
    at: int,
    *,
    ranks: Sequence[int] | None,
    sig: int,
    timeout: float,
    log: Path,
    env: dict[str, str] | None = None,
    grace: float | None = None,
) -> SignalledRun:
    """Start ``command``; once ``progress()`` reaches ``at``, send ``sig`` to some ranks.

    Args:
        command: a launch command line (starting torchrun when ``ranks`` is given).
        progress: how far the run is, e.g. the last step its metrics file records (-1 before).
        at: signal once ``progress()`` returns at least this.
        ranks: the ranks to signal (pids found under the launcher); None signals the launcher.
        sig: the signal number (SIGKILL, SIGTERM, ...).
        timeout: hard limit in seconds for the whole run; on expiry every process is killed
            and ``subprocess.TimeoutExpired`` is raised.
        log: file receiving the run's stderr (read back into the result).
        env: environment (default ``clean_env()``).
        grace: also kill everything if the run has not ended this many seconds after the signal.

    Raises:
        RuntimeError: the run ended before ``at``, or a rank in ``ranks`` was not found.
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
    seen: int | None = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            current = progress()
            if current >= at:
                seen = current
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
        if seen is None:
            text = log.read_text()[-3000:]
            raise RuntimeError(f"progress {at} not reached (exit {proc.poll()}):\n{text}")
        left = deadline - time.monotonic()
        proc.wait(timeout=max(1.0, left if grace is None else min(left, grace)))
        return SignalledRun(seen, proc.returncode, log.read_text())
    finally:
        kill_tree(proc)
