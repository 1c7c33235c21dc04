"""A kill at any point of a save never loses the committed step (class: commit).

The case of the report: a finished run is launched again (it resumes at its last step and saves
that step again), and is killed between the two renames that replace the committed copy. Here
the relaunch is killed (``os._exit``, no cleanup) before each rename, replace and tree removal
it makes in turn; after every kill the checkpoint directory must still hold a complete step with
the original weights, and a further relaunch must finish.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tune.checkpoint import CheckpointManager
from tune.dist.testing import clean_env

from .conftest import SHORT, Assets, Expect, tree_digest, tune_cli

pytestmark = pytest.mark.integration

KILLING_RELAUNCH = """
import os, shutil, sys

kill_at, calls = int(sys.argv[1]), [0]


def arm(module, name):
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(137)  # like kill -9: no finally blocks, no atexit
        return original(*args, **kwargs)

    setattr(module, name, counted)


for module, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
    arm(module, name)
from tune.recipes.cli import main

status = main(sys.argv[2:])
print("CALLS", calls[0], flush=True)
sys.exit(status)
"""


def _relaunch(argv: list[str], kill_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KILLING_RELAUNCH, str(kill_at), *argv],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )  # fmt: skip


def test_a_kill_at_every_point_of_a_step_saved_again_keeps_the_step(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    out = tmp_path / "out"
    argv = assets.argv("sft", out, *SHORT)
    assert tune_cli(argv)[0] == 0
    step = out / "checkpoints" / "step_1"
    weights = tree_digest(step / "model")
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    counted = _relaunch(argv, kill_at=0)  # never killed: counts the calls
    assert counted.returncode == 0, counted.stderr[-3000:]
    total = int(counted.stdout.split("CALLS")[-1])
    assert total >= 3, counted.stdout
    for kill_at in range(1, total + 1):
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        killed = _relaunch(argv, kill_at)
        assert killed.returncode == 137, (kill_at, killed.stderr[-2000:])
        found = CheckpointManager(out / "checkpoints").latest()
        kept = found is not None and tree_digest(found / "model") == weights
        case = f"{expect.case}[kill before call {kill_at}/{total}]"
        expect._record("commit", kept, False, not kept, f"latest={found}", case=case)
        assert kept, f"kill before call {kill_at}: latest() = {found}"
        status, err = tune_cli(argv)  # the same command again: resumes, finishes
        assert status == 0, (kill_at, err)
        assert tree_digest(step / "model") == weights
