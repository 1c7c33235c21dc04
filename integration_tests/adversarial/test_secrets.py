"""No secret is echoed, logged or saved, by any training recipe (class: secrets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import SHORT, Assets, Expect, tune_cli

pytestmark = pytest.mark.integration

SECRET = "hf_" + "CanarySecret" * 3
ENV_SECRET = "hf_" + "EnvCanary" * 4
SHORT_BY_RECIPE = {
    "sft": SHORT,
    "distill": SHORT,
    "preference": ("training.max_steps=1", "training.lr_schedule.warmup_steps=0",
                   "checkpointing.save_merged=false"),
    "grpo": ("training.max_steps=1", "training.lr_schedule.warmup_steps=0"),
}  # fmt: skip


@pytest.mark.parametrize(
    "item",
    [
        f"data.hf_tokn={SECRET}",
        f"logging.api_key={SECRET}",
        SECRET,
        f"data.max_seq_len={SECRET}",
        f"training.optimizer.lr={SECRET}",
    ],
    ids=["mistyped-secret-key", "unknown-secret-key", "bare-value", "wrong-type", "float-key"],
)
def test_a_bad_override_never_echoes_a_secret(
    item: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    argv = [*assets.argv("sft", tmp_path / "out"), item]
    argv[0] = "validate"
    del argv[1:3]  # `validate <config> ...` takes no recipe and no --config flag
    expect.refused("secrets", argv, secrets=(SECRET,))


@pytest.mark.parametrize("recipe", ["sft", "preference", "distill", "grpo"])
def test_secrets_stay_out_of_every_file_a_recipe_writes(
    recipe: str, assets: Assets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect: Expect
) -> None:
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    out = tmp_path / "out"
    argv = [*assets.argv(recipe, out, *SHORT_BY_RECIPE[recipe]),
            f"logging.options={{wandb: {{api_key: {SECRET}}}, jsonl: {{}}}}",
            "checkpointing.save_every_n_steps=1"]  # fmt: skip
    status, err = tune_cli(argv)
    assert status == 0, err
    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any("step_1" in str(p) for p in written)
    assert (out / "config.yaml") in written
    leaks = [str(p) for p, blob in written.items() if SECRET.encode() in blob or
             ENV_SECRET.encode() in blob]  # fmt: skip
    expect._record("secrets", not leaks and status == 0, False, bool(leaks), ", ".join(leaks))
    assert leaks == [], leaks
    assert os.environ["HF_TOKEN"] == ENV_SECRET
