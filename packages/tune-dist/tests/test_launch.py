"""tune.dist.launch: torchrun flags through argparse, the command built, and a failing rank."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tune.dist.launch import (
    add_torchrun_arguments,
    build_torchrun_argv,
    exit_status,
    launch_world_size,
    torchrun_args,
)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_torchrun_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv", [["--nproc-per-node", "2", "--standalone"], ["--nproc_per_node=2", "--standalone"]]
)
def test_flags_in_both_spellings_come_back_canonical(argv: list[str]) -> None:
    assert torchrun_args(_parse(argv)) == ["--nproc-per-node=2", "--standalone"]
    assert torchrun_args(_parse([])) == []


def test_world_size_and_argv_are_what_torchrun_accepts() -> None:
    flags = torchrun_args(_parse(["--nproc-per-node=4", "--nnodes=2", "--node-rank=1"]))
    assert launch_world_size(flags) == 8
    assert launch_world_size(["--nproc-per-node=gpu"]) is None
    assert launch_world_size(["--nnodes=1:2"]) is None
    built = build_torchrun_argv(flags, "pkg.train", ["--config", "/c.yaml"], prog="t", python="py")
    assert built == ["py", "-m", "tune.dist.launch", "--prog=t", *flags, "-m", "pkg.train",
                     "--config", "/c.yaml"]  # fmt: skip
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(built[4:])
    assert (parsed.nproc_per_node, parsed.nnodes, parsed.node_rank) == ("4", "2", 1)
    assert (parsed.module, parsed.training_script) == (True, "pkg.train")
    assert parsed.training_script_args == ["--config", "/c.yaml"]


def test_exit_status_is_shell_style() -> None:
    assert exit_status(2) == 2
    assert exit_status(-9) == 137  # SIGKILL
    assert exit_status(0) == 1  # a failed rank never reads as success


def test_importing_the_launcher_does_not_import_torch() -> None:
    code = "import sys, tune.dist.launch; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.timeout(120)
def test_a_failing_rank_is_one_line_and_its_status(tmp_path: Path) -> None:
    (tmp_path / "fails_on_rank1.py").write_text(
        "import os, sys\nif os.environ['RANK'] == '1':\n"
        "    print('rank 1: bad input', file=sys.stderr)\n    sys.exit(3)\n"
    )
    argv = build_torchrun_argv(
        ["--nproc-per-node=2", "--standalone"], "fails_on_rank1", prog="mytool"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=110)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "rank 1: bad input" in result.stderr
    assert "mytool: rank 1 (exit 3) failed; each rank's error is above" in result.stderr
