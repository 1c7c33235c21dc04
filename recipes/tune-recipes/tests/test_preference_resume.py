"""Kill -9 a real `tune run preference` and relaunch: the losses continue bit-identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune.checkpoint import ResumeMismatchError
from tune.data.synthetic import write_preference_data
from tune.dist.testing import run_and_kill_at, run_to_end
from tune.train.loggers import read_jsonl_metrics
from tune_testing import (
    TinyAssets,
    last_step_of,
    run_in_process,
    tiny_overrides,
    tune_command,
)

STEPS = 8
TIMEOUT = 240
KEYS = ("loss", "accuracy", "reward_margin", "grad_norm")


def _overrides(assets: TinyAssets, data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        TinyAssets(assets.checkpoint_dir, data), out, f"training.max_steps={STEPS}",
        "checkpointing.save_every_n_steps=2", "eval.every_n_steps=4", "eval.max_batches=2",
        "eval.before_training=false", "training.lora.dropout=0.1", *extra,
    )  # fmt: skip


def _command(assets: TinyAssets, data: Path, out: Path, *extra: str) -> list[str]:
    return tune_command(
        "preference", "preference/tiny_cpu_dpo_lora", _overrides(assets, data, out, *extra)
    )


def _metrics(out: Path) -> dict[str, dict[int, float]]:
    return {key: read_jsonl_metrics(out / "metrics.jsonl", key) for key in (*KEYS, "val_accuracy")}


@pytest.mark.parametrize(
    ("data_key", "extra"),
    [
        ("paired", ()),
        # Same loop and checkpoint code as DPO; two CLI starts cost ~40 s on a busy machine.
        pytest.param(
            "unpaired", ("training.loss.name=kto", "data.format=unpaired"), marks=pytest.mark.slow
        ),
    ],
    ids=["dpo", "kto"],
)
def test_kill9_then_resume_auto_is_bit_identical(
    data_key: str,
    extra: tuple[str, ...],
    tiny_assets: TinyAssets,
    tmp_path: Path,
) -> None:
    data = write_preference_data(tmp_path / "data", num_rows=120)[data_key]
    # The uninterrupted run in this process (one thread, as the CLI runs get): one process
    # start less; the killed and resumed runs go through the real CLI.
    reference_out = tmp_path / "uninterrupted"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_in_process(
            "preference",
            "preference/tiny_cpu_dpo_lora",
            _overrides(tiny_assets, data, reference_out, *extra),
        )
    finally:
        torch.set_num_threads(threads)
    reference = _metrics(reference_out)
    assert sorted(reference["loss"]) == list(range(1, STEPS + 1))

    out = tmp_path / "run"
    command = _command(tiny_assets, data, out, *extra)
    seen = run_and_kill_at(command, last_step_of(out / "metrics.jsonl"), 5, TIMEOUT)
    assert seen >= 5
    assert (out / "checkpoints" / "step_4").is_dir()
    run_to_end(command, TIMEOUT)  # the same command: resume=auto picks the last committed step
    # dropout is on: equality needs the RNG state restored too, not just weights and data.
    assert _metrics(out) == reference


def test_resume_with_another_objective_is_refused(tiny_assets: TinyAssets, tmp_path: Path) -> None:
    data = write_preference_data(tmp_path / "data", num_rows=60)["paired"]
    out = tmp_path / "run"
    assets = TinyAssets(tiny_assets.checkpoint_dir, data)
    common = ("checkpointing.save_every_n_steps=1", "eval.every_n_steps=null",
              "eval.before_training=false", "training.lr_schedule.warmup_steps=0")  # fmt: skip
    config = "preference/tiny_cpu_dpo_lora"
    run_in_process(
        "preference", config, tiny_overrides(assets, out, "training.max_steps=1", *common)
    )
    with pytest.raises(ResumeMismatchError, match=r"training.loss: saved .*'dpo'.*now .*'ipo'"):
        run_in_process("preference", config, tiny_overrides(
            assets, out, "training.max_steps=2", "training.loss.name=ipo", *common))  # fmt: skip
