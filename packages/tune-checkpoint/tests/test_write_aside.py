"""Final outputs are written aside and renamed in: a full disk or a kill leaves the previous one."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tune.checkpoint.peft_adapter as peft_adapter
import tune.checkpoint.safetensors_dir as safetensors_dir
from tune.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    load_peft_adapter,
    load_safetensors_dir,
    save_hf_checkpoint,
    save_peft_adapter,
    save_safetensors_dir,
)
from tune.checkpoint.write_aside import restore_interrupted

CONFIG = {"model_type": "llama", "hidden_size": 4}


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.full((16,), value) for i in range(4)}


def _disk_full_on_call(module: Any, monkeypatch: pytest.MonkeyPatch, fail_on: int) -> None:
    """Make the `fail_on`-th write_safetensors_file write half its file, then fail like write()."""
    original, calls = module.write_safetensors_file, []

    def write(path: Path, *args: Any, **kwargs: Any) -> int:
        calls.append(path)
        if len(calls) == fail_on:
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")  # names no file
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, "write_safetensors_file", write)


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_hf_save_on_a_full_disk_keeps_the_previous_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "hf"
    save_hf_checkpoint(out, _weights(1.0), config=CONFIG, max_shard_size=100)
    (out / "README.md").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    _disk_full_on_call(safetensors_dir, monkeypatch, fail_on=2)
    with pytest.raises(CheckpointWriteError) as info:
        save_hf_checkpoint(out, _weights(2.0), config=CONFIG, max_shard_size=100)
    assert isinstance(info.value, CheckpointError)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert str(out) in message
    assert "model-00002-of-00004.safetensors" in message
    assert "No space left on device" in message
    assert sorted(p.name for p in out.iterdir()) == before
    assert torch.equal(load_safetensors_dir(out)["w3"], torch.full((16,), 1.0))
    assert _debris(tmp_path) == []


def test_hf_save_into_a_new_directory_on_a_full_disk_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _disk_full_on_call(safetensors_dir, monkeypatch, fail_on=1)
    with pytest.raises(CheckpointWriteError, match=r"model\.safetensors"):
        save_hf_checkpoint(tmp_path / "model", _weights(1.0), config=CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no config.json without weights


def test_config_write_failure_names_config_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CheckpointWriteError, match=r"hf/config.json failed: No space left"):
        save_hf_checkpoint(tmp_path / "hf", _weights(1.0), config=CONFIG)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_resave_replaces_weights_and_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "st"
    save_safetensors_dir(out, _weights(1.0), max_shard_size=100)
    (out / "notes.txt").write_text("kept")
    save_safetensors_dir(out, _weights(2.0))
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "notes.txt"]
    assert torch.equal(load_safetensors_dir(out)["w0"], torch.full((16,), 2.0))


def test_safetensors_dir_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_safetensors_dir(tmp_path / "st", _weights(1.0))
    _disk_full_on_call(safetensors_dir, monkeypatch, fail_on=1)
    with pytest.raises(CheckpointWriteError, match=r"st/model.safetensors failed"):
        save_safetensors_dir(tmp_path / "st", _weights(2.0))
    assert torch.equal(load_safetensors_dir(tmp_path / "st")["w0"], torch.full((16,), 1.0))
    assert _debris(tmp_path) == []


def test_peft_adapter_full_disk_keeps_the_previous_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"r": 2, "lora_alpha": 4, "target_modules": ["q"]}
    save_peft_adapter(tmp_path / "a", {"q.lora_A.weight": torch.ones(2, 3)}, config)
    _disk_full_on_call(peft_adapter, monkeypatch, fail_on=1)
    with pytest.raises(CheckpointWriteError, match=r"a/adapter_model.safetensors failed") as info:
        save_peft_adapter(tmp_path / "a", {"q.lora_A.weight": torch.zeros(2, 3)}, config)
    assert info.value.errno == errno.ENOSPC
    state, saved = load_peft_adapter(tmp_path / "a")
    assert torch.equal(state["q.lora_A.weight"], torch.ones(2, 3))
    assert saved["r"] == 2
    assert _debris(tmp_path) == []


def test_a_kill_between_the_renames_is_undone_by_the_next_write(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    save_hf_checkpoint(out, _weights(1.0), config=CONFIG)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    out.rename(tmp_path / f".hf.old-{dead}")  # killed after the first rename
    (tmp_path / f".hf.tmp-{dead}").mkdir()
    restore_interrupted(out)
    assert torch.equal(load_safetensors_dir(out)["w0"], torch.full((16,), 1.0))
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 4
    assert _debris(tmp_path) == []
