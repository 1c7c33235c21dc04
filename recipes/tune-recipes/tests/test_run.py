"""`tune run`: in-process dispatch, the torchrun pass-through argv, and a real 2-process launch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tune.dist.launch import launch_world_size, torchrun_args
from tune.recipes.cli import main, parse_args
from tune.recipes.commands.run import rank_argv
from tune.recipes.discovery import load_recipe
from tune.recipes.sft import SFTConfig
from tune_testing import run_tune


def _config(tmp_path: Path, out: Path, batch: int = 4) -> Path:
    path = tmp_path / "echo.yaml"
    path.write_text(f"recipe: echo\nout_dir: {out}\nbatch: {batch}\n")
    return path


def test_run_in_process_passes_the_typed_config(echo_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(tmp_path, out)
    rc = main(["run", "echo", "--config", str(cfg), "message=007", "lr=0.5", "tags=[a, b]"])
    assert rc == 0
    record = json.loads((out / "rank0.json").read_text())
    assert record == {
        "rank": 0,
        "world_size": 1,
        "config": {
            "out_dir": str(out),
            "message": "007",
            "batch": 4,
            "lr": 0.5,
            "tags": ["a", "b"],
        },
    }


def test_run_reads_rank_and_world_size_from_the_environment(
    echo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a plain `torchrun ... -m tune.recipes run ...` (or any launcher) gives each rank.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    assert main(["run", "echo", "--config", str(_config(tmp_path, out))]) == 0
    assert json.loads((out / "rank1.json").read_text())["world_size"] == 2
    # Validation used WORLD_SIZE=2 too: batch 3 is not divisible by it.
    assert main(["run", "echo", "--config", str(_config(tmp_path, out, batch=3))]) == 2


def test_run_finds_bundled_configs_of_the_recipe(
    echo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # echo_default.yaml writes to ./echo_out
    assert main(["run", "echo", "--config", "echo_default", "message=hi"]) == 0
    assert (
        json.loads((tmp_path / "echo_out" / "rank0.json").read_text())["config"]["message"] == "hi"
    )


def test_run_bad_config_or_recipe_is_one_clean_error(
    echo_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, tmp_path / "out")
    assert main(["run", "echo", "--config", str(cfg), "lr=0"]) == 2
    assert "lr: must be > 0, got 0.0" in capsys.readouterr().err
    assert main(["run", "echoo", "--config", str(cfg)]) == 2
    assert "no recipe named 'echoo' is installed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sft_run_reaches_the_recipe(sft_yaml, capsys) -> None:
    # The fixture's config.json is a stub: the loop starts, reads it and names what is missing,
    # in one line on stderr (exit status 2) with the file's path.
    assert main(["run", "sft", "--config", str(sft_yaml())]) == 2
    err = capsys.readouterr().err
    assert "config.json: field 'vocab_size'" in err, err
    assert "is required but missing" in err, err
    assert "Traceback" not in err
    # Importing the loop module must not shadow the registered recipe object.
    assert load_recipe("sft").config_class is SFTConfig


@pytest.mark.parametrize(
    "flags",
    [
        ["--nproc-per-node", "2", "--standalone"],
        ["--nproc_per_node=2", "--standalone"],
    ],
)
def test_torchrun_flags_in_both_spellings(flags: list[str]) -> None:
    args = parse_args(["run", "sft", "--config", "c.yaml", *flags, "a=1"])
    assert torchrun_args(args) == ["--nproc-per-node=2", "--standalone"]
    assert args.overrides == ["a=1"]


def test_all_torchrun_flags_pass_through_and_argv_is_built() -> None:
    argv = [
        "run", "sft", "--config", "c.yaml",
        "--nnodes", "2", "--nproc_per_node", "4", "--node-rank", "1",
        "--rdzv_endpoint", "host:29400", "--rdzv-backend", "c10d",
        "--master-addr", "10.0.0.1", "--master_port", "29500", "--max-restarts", "0",
        "training.lr=1e-4",
    ]  # fmt: skip
    args = parse_args(argv)
    flags = torchrun_args(args)
    assert flags == [
        "--nproc-per-node=4",
        "--nnodes=2",
        "--node-rank=1",
        "--rdzv-endpoint=host:29400",
        "--rdzv-backend=c10d",
        "--master-addr=10.0.0.1",
        "--master-port=29500",
        "--max-restarts=0",
    ]
    assert launch_world_size(flags) == 8
    assert launch_world_size(["--nproc-per-node=gpu"]) is None
    assert launch_world_size(["--nnodes=1:2"]) is None
    built = rank_argv(flags, "sft", "/abs/c.yaml", ["training.lr=1e-4"], ["mypkg.*"])
    assert built[1:] == [
        "-m", "tune.dist.launch", "--prog=tune run", *flags,
        "-m", "tune.recipes", "run", "sft", "--config", "/abs/c.yaml",
        "--allow-import", "mypkg.*", "training.lr=1e-4",
    ]  # fmt: skip
    # torchrun itself accepts what we build.
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(built[4:])
    assert (parsed.nproc_per_node, parsed.nnodes, parsed.node_rank) == ("4", "2", 1)
    assert parsed.module
    assert parsed.training_script == "tune.recipes"
    assert parsed.training_script_args[:2] == ["run", "sft"]


def test_launch_validates_against_the_launch_world_size_first(
    echo_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, tmp_path / "out", batch=4)
    assert main(["run", "echo", "--config", str(cfg), "--nproc-per-node", "3"]) == 2
    assert "batch: 4 is not divisible by the world size 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was launched


@pytest.mark.distributed
@pytest.mark.timeout(90)
def test_real_two_process_launch(echo_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(tmp_path, out)
    result = run_tune(
        "run", "echo", "--config", str(cfg), "--nproc-per-node", "2", "--standalone",
        "message=from-launcher",
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ["PYTHONPATH"]},
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 for r in records)
    assert all(r["config"]["message"] == "from-launcher" for r in records)
