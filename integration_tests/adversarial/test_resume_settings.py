"""A resume never silently keeps old settings or repeats logged steps (class: resume)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import Assets, Expect, tune_cli

pytestmark = pytest.mark.integration

TWO_STEPS = (
    "training.max_steps=2",
    "training.lr_schedule.warmup_steps=0",
    "training.lr_schedule.name=constant",
    "checkpointing.save_every_n_steps=1",
    "checkpointing.save_merged=false",
    "eval.before_training=false",
    "logging.log_every_n_steps=1",
)


@pytest.fixture(scope="module")
def finished(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step sft run (steps 1 and 2 committed)."""
    out = tmp_path_factory.mktemp("resume_settings") / "out"
    status, err = tune_cli(assets.argv("sft", out, *TWO_STEPS))
    assert status == 0, err
    return out


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("training.optimizer.lr=5e-3", "training.optimizer.lr"),
        ("training.max_steps=3", "training.max_steps"),
        ("training.optimizer.weight_decay=0.5", "training.optimizer.weight_decay"),
        ("training.max_grad_norm=0.5", "training.max_grad_norm"),
        ("training.lr_schedule.name=linear", "training.lr_schedule.name"),
        ("training.lora.alpha=32", "training.lora.alpha"),
        ("training.lora.dropout=0.2", "training.lora.dropout"),
        ("training.nonfinite=skip", "training.nonfinite"),
        ("data.max_seq_len=128", "data.max_seq_len"),
        ("training.seed=7", "training.seed"),
        ("data.seed=7", "data.seed"),
        ("training.global_batch_size=4", "training.global_batch_size"),
    ],
)
def test_a_changed_setting_is_refused_naming_it(
    item: str, key: str, assets: Assets, finished: Path, tmp_path: Path, expect: Expect
) -> None:
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    argv = [*assets.argv("sft", out, *TWO_STEPS), item]
    message = expect.refused("resume", argv, key, "saved", intact=(out / "checkpoints",))
    assert "now" in message


def test_a_listed_change_is_applied_logged_and_recorded(
    assets: Assets, finished: Path, tmp_path: Path
) -> None:
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    argv = [
        *assets.argv("sft", out, *TWO_STEPS),
        "training.max_steps=4",
        "training.optimizer.lr=5e-3",
        "checkpointing.resume_overrides=[training.max_steps,training.optimizer.lr]",
    ]
    status, err = tune_cli(argv)
    assert status == 0, err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in lines if "lr" in r}
    assert lrs[1] == lrs[2] == pytest.approx(1e-3)  # the constant schedule of the first run
    assert lrs[3] == lrs[4] == pytest.approx(5e-3)  # the new lr is the one used
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["training"]["optimizer"]["lr"] == pytest.approx(5e-3)
    extra = torch.load(out / "checkpoints" / "step_4" / "extra.pt", weights_only=True)
    assert extra["resume_overrides"][0]["step"] == 2
    assert extra["resume_overrides"][0]["changed"]["training.optimizer.lr"] == [1e-3, 5e-3]


def test_metrics_never_repeat_a_step_after_a_resume(assets: Assets, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = assets.argv("sft", out, *TWO_STEPS)
    assert tune_cli(argv)[0] == 0
    # a crash after step 2 was logged but before it was saved: drop the step_2 directory
    shutil.rmtree(out / "checkpoints" / "step_2")
    status, err = tune_cli(argv)
    assert status == 0, err
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in records if "loss" in r]
    val_steps = [r["step"] for r in records if "val_loss" in r]
    assert loss_steps == [1, 2], records  # step 2 logged once, by the resumed run
    assert val_steps == [2], records
