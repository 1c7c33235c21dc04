"""RunLock: one holder per directory, named in the refusal; released by the kernel on kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tune.checkpoint import RunLock, RunLockedError, read_lock_holder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock semantics")

HOLDER = textwrap.dedent(
    """
    import sys, time
    from tune.checkpoint import RunLock
    lock = RunLock(sys.argv[1], command=["train", "--x"]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_in_the_same_process_fails_naming_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run", command=["tune", "run"]) as lock:
        holder = read_lock_holder(lock.path)
        assert holder is not None
        assert holder["pid"] == os.getpid()
        assert holder["command"] == ["tune", "run"]
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on host") as info:
            RunLock(tmp_path / "run").acquire()
        assert str(tmp_path / "run") in str(info.value)
        assert holder["started"] in str(info.value)
    # released: a new lock is taken at once
    with RunLock(tmp_path / "run"):
        pass


def test_lock_held_by_another_process_fails_with_its_pid(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {proc.pid} on host .*command: train --x"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_and_rewritten(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = json.loads((tmp_path / ".tune.lock").read_text())
    assert stale["pid"] == proc.pid  # the file is left behind, but its flock is gone
    deadline = time.monotonic() + 10
    while True:
        try:
            lock = RunLock(tmp_path).acquire()
            break
        except RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    try:
        assert read_lock_holder(lock.path)["pid"] == os.getpid()  # type: ignore[index]
    finally:
        lock.release()
    assert not lock.locked
