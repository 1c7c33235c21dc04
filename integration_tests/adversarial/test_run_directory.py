"""A run never writes into its inputs, and one run at a time owns a directory (classes: inputs,
lock)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SHORT, Assets, Expect, tree_digest, tune_cli

pytestmark = pytest.mark.integration

HOLD_LOCK = """
import sys, time
from tune.checkpoint import RunLock
RunLock(sys.argv[1], command=["holder-of-the-test"]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_the_merged_export_cannot_overwrite_the_base_weights(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    # The attack of the report: the base lives at <run>/model, where the merged export goes.
    run = tmp_path / "run"
    base = Path(shutil.copytree(assets.base, run / "model"))
    argv = assets.argv("sft", run, *SHORT, base=base)
    expect.refused("inputs", argv, "checkpointing.output_dir", "contains", "model.checkpoint_dir",
                   intact=(base,))  # fmt: skip
    assert not (run / "checkpoints").exists()


@pytest.mark.parametrize("relation", ["is", "lies inside", "through a symlink"])
def test_an_output_dir_overlapping_the_base_is_refused(
    relation: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    base = Path(shutil.copytree(assets.base, tmp_path / "base"))
    out = {"is": base, "lies inside": base / "runs" / "one"}.get(relation)
    if out is None:
        out = tmp_path / "link"
        out.symlink_to(base, target_is_directory=True)
    expected = "is" if relation == "through a symlink" else relation
    argv = assets.argv("sft", out, *SHORT, base=base)
    expect.refused("inputs", argv, f" {expected} the input model.checkpoint_dir", intact=(base,))
    assert not (base / ".tune.lock").exists()


def test_a_tokenizer_inside_the_output_dir_is_refused(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    out = tmp_path / "out"
    tokenizer = Path(shutil.copytree(assets.base, out / "tokenizer"))
    argv = [*assets.argv("sft", out, *SHORT), f"tokenizer.path={tokenizer}"]
    expect.refused("inputs", argv, "contains the input tokenizer.path", intact=(tokenizer,))


@pytest.mark.parametrize(
    ("recipe", "key"),
    [
        ("distill", "teacher.checkpoint_dir"),
        ("preference", "model.checkpoint_dir"),
        ("grpo", "model.checkpoint_dir"),
    ],
)
def test_every_training_recipe_protects_its_model_inputs(
    recipe: str, key: str, assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    base = Path(shutil.copytree(assets.base, tmp_path / "run" / "model"))
    if recipe == "distill":
        argv = [*assets.argv(recipe, tmp_path / "run"), f"teacher.checkpoint_dir={base}"]
    else:
        argv = assets.argv(recipe, tmp_path / "run", base=base)
    expect.refused("inputs", argv, "contains the input", key, intact=(base,))


def test_base_weights_changed_since_the_checkpoint_refuse_the_resume(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    base = Path(shutil.copytree(assets.base, tmp_path / "base"))
    out = tmp_path / "out"
    argv = assets.argv("sft", out, *SHORT, base=base)
    status, err = tune_cli(argv)
    assert status == 0, err
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    expect.refused("inputs", argv, "model.checkpoint_dir",
                   "model.safetensors changed content", intact=(out / "checkpoints",))  # fmt: skip


def _hold_lock(directory: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_a_directory_fails_at_once_naming_the_holder(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        started = time.monotonic()
        expect.refused("lock", assets.argv("sft", out, *SHORT), f"pid {holder.pid}", "locked")
        assert time.monotonic() - started < 30
        assert not (out / "checkpoints").exists()
        assert not (out / "config.yaml").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # killed with -9: the kernel released the lock, and the run goes ahead
    status, err = tune_cli(assets.argv("sft", out, *SHORT))
    assert status == 0, err
    assert (out / "checkpoints" / "step_1").is_dir()


def test_the_lock_is_released_when_a_run_fails(assets: Assets, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, err = tune_cli([*assets.argv("sft", out, *SHORT), "data.source=/nonexistent.jsonl"])
    assert status == 2, err
    status, err = tune_cli(assets.argv("sft", out, *SHORT))
    assert status == 0, err
    before = tree_digest(out / "checkpoints")
    assert before


def test_tune_validate_refuses_an_output_dir_over_an_input(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    base = Path(shutil.copytree(assets.base, tmp_path / "run" / "model"))
    argv = ["validate", "sft/tiny_cpu_lora", f"model.checkpoint_dir={base}",
            f"data.source={assets.sft.data_file}", f"checkpointing.output_dir={tmp_path / 'run'}"]  # fmt: skip
    expect.refused("inputs", argv, "contains the input model.checkpoint_dir", intact=(base,))


def test_quantize_never_writes_into_or_clears_an_input(
    assets: Assets, tmp_path: Path, expect: Expect
) -> None:
    base = Path(shutil.copytree(assets.base, tmp_path / "model.tmp"))
    quantize = ["run", "quantize", "--config", "quantize/tiny_cpu_int8",
                f"model.checkpoint_dir={base}"]  # fmt: skip
    expect.refused("inputs", [*quantize, f"output_dir={base / 'int8'}"],
                   "lies inside the input model.checkpoint_dir", intact=(base,))  # fmt: skip
    # `model` beside `model.tmp`: the old scratch name; the base must survive the export
    before = tree_digest(base)
    status, err = tune_cli([*quantize, f"output_dir={tmp_path / 'model'}"])
    assert status == 0, err
    assert tree_digest(base) == before


def test_a_full_disk_in_the_final_export_keeps_the_previous_output(
    assets: Assets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect: Expect
) -> None:
    import errno

    import tune.checkpoint.safetensors_dir as safetensors_dir

    out = tmp_path / "out"
    merged = [s for s in SHORT if not s.startswith("checkpointing.save_merged")]
    argv = [*assets.argv("sft", out, *merged), "checkpointing.save_merged=true"]
    assert tune_cli(argv)[0] == 0
    previous = tree_digest(out / "model")

    write = safetensors_dir.write_safetensors_file

    def full_disk(path: Path, *args: object, **kwargs: object) -> int:
        if "checkpoints" in str(path):  # the training state still fits; the export does not
            return write(path, *args, **kwargs)  # type: ignore[arg-type]
        Path(path).write_bytes(b"\0" * 100)  # half a file, then the error write() gives
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors_dir, "write_safetensors_file", full_disk)
    again = [*argv, "training.max_steps=2", "checkpointing.resume_overrides=[training.max_steps]"]
    expect.refused("disk full", again, "No space left on device", str(out / "model"),
                   intact=(out / "model",))  # fmt: skip
    assert tree_digest(out / "model") == previous
