"""tune.dist.testing: rank processes of a real torchrun launch are found, signalled and reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune.dist.testing import (
    clean_env,
    descendant_pids,
    kill_tree,
    rank_pids,
    run_and_kill_at,
    run_and_signal_rank,
    run_launch,
    run_to_end,
)

# Each rank counts up in its own file every 50 ms (no process group: only the launch matters).
COUNTER = """
import os, sys, time
path = os.path.join(sys.argv[1], "count_rank" + os.environ.get("RANK", "x"))
for i in range(1, 10_000):
    with open(path + ".tmp", "w") as f:
        f.write(str(i))
    os.replace(path + ".tmp", path)
    time.sleep(0.05)
"""


def _count(path: Path) -> int:
    return int(path.read_text()) if path.is_file() else -1


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_clean_env_drops_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_PORT", "29500")
    env = clean_env(EXTRA="1")
    assert "RANK" not in env
    assert "MASTER_PORT" not in env
    assert (env["OMP_NUM_THREADS"], env["EXTRA"], env["PATH"]) == ("1", "1", os.environ["PATH"])


def test_one_rank_of_a_torchrun_launch_is_found_and_killed(tmp_path: Path) -> None:
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(script), str(tmp_path)]  # fmt: skip
    killed = run_and_signal_rank(
        command, lambda: _count(tmp_path / "count_rank0"), 3, ranks=[1], sig=signal.SIGKILL,
        timeout=120, log=tmp_path / "stderr.txt", grace=60,
    )  # fmt: skip
    assert killed.signalled_at >= 3
    assert killed.returncode != 0, "torchrun survived the death of a rank"
    # torchrun names the killed rank as the root cause: the signal reached rank 1, not rank 0
    root_cause = killed.stderr.split("Root Cause")[-1]
    assert "rank      : 1 (local_rank: 1)" in root_cause, killed.stderr[-2000:]
    assert "exitcode  : -9" in root_cause
    with pytest.raises(RuntimeError, match=r"progress 1000000 not reached \(exit 0\)"):
        run_and_signal_rank(
            [sys.executable, "-c", "pass"], lambda: -1, 1_000_000, ranks=None,
            sig=signal.SIGTERM, timeout=30, log=tmp_path / "quick.txt",
        )  # fmt: skip


def test_rank_pids_and_kill_tree_cover_every_process(tmp_path: Path) -> None:
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    launch = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path)], env=clean_env(), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while min(_count(tmp_path / f"count_rank{r}") for r in (0, 1)) < 1:
            assert launch.poll() is None, "the launch ended before both ranks counted"
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.05)
        ranks = rank_pids(launch.pid)
        assert sorted(ranks) == [0, 1]
        assert set(ranks.values()) <= set(descendant_pids(launch.pid))
        assert launch.pid not in ranks.values()
    finally:
        kill_tree(launch)
    assert launch.returncode == -signal.SIGKILL
    assert not any(_alive(pid) for pid in ranks.values())


def test_run_and_kill_at_kills_the_process_group(tmp_path: Path) -> None:
    # A parent that starts the counter as a child: both are killed, not only the parent.
    parent = (f"import subprocess, sys; subprocess.run([sys.executable, '-c', {COUNTER!r}, "
              f"{str(tmp_path)!r}])")  # fmt: skip
    seen = run_and_kill_at(
        [sys.executable, "-c", parent], lambda: _count(tmp_path / "count_rankx"), 4, 60
    )
    assert seen >= 4
    time.sleep(0.3)
    after = _count(tmp_path / "count_rankx")
    time.sleep(0.3)
    assert _count(tmp_path / "count_rankx") == after, "the child kept counting"
    with pytest.raises(RuntimeError, match=r"run ended \(exit 3\) at progress -1 before 1:\nboom"):
        run_and_kill_at(
            [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
            lambda: -1, 1, 30,
        )  # fmt: skip
    with pytest.raises(TimeoutError, match=r"progress 1 not reached in 0\.5 s"):
        run_and_kill_at([sys.executable, "-c", "import time; time.sleep(30)"], lambda: 0, 1, 0.5)


def test_run_launch_and_run_to_end_report_output_failures_and_timeouts(tmp_path: Path) -> None:
    ok = run_launch(
        [sys.executable, "-c", "import os, sys; print(os.environ.get('RANK')); sys.stderr.write('e')"],
        30, tmp_path / "ok.txt", clean_env(),
    )  # fmt: skip
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "None\n", "e")
    assert (tmp_path / "ok.txt").read_text() == "e"
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="still running after 1 s"):
        run_launch([sys.executable, "-c", "import time; time.sleep(60)"], 1, tmp_path / "slow.txt")
    assert time.monotonic() - start < 30
    assert run_to_end([sys.executable, "-c", "print('done')"], 30).stdout == "done\n"
    with pytest.raises(RuntimeError, match=r"failed \(2\):\nbad input"):
        run_to_end(
            [sys.executable, "-c", "import sys; sys.stderr.write('bad input'); sys.exit(2)"], 30
        )
