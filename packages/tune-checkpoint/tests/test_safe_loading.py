"""Loading runs no code from a checkpoint: a planted DCP `.metadata` or DCP value is refused before
anything is called, real DCP state still loads, and every refused pickle names its file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tune.checkpoint import (
    CheckpointManager,
    CorruptCheckpointError,
    load_peft_adapter,
    load_sharded,
    read_sharded_metadata,
    save_sharded,
)
from tune.checkpoint.commit import MANIFEST_NAME, write_manifest
from tune.checkpoint.dcp_safe_read import read_dcp_metadata

pytest.importorskip("numpy")  # DCP on CPU needs numpy

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class _Payload:
    """Unpickling this object runs `exec(code)`, which writes the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.code = f"open({str(sentinel)!r}, 'w').write('pwned')"

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    model.register_buffer("seen", torch.tensor([7], dtype=torch.int64))
    model.register_buffer("scale", torch.full((3,), 0.5, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 6)).pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def test_real_model_and_optimizer_state_round_trips(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    saved = {"model": model.state_dict(), "optim": optimizer.state_dict(), "epoch": 3}
    save_sharded(tmp_path, saved)

    shapes = read_sharded_metadata(tmp_path)
    assert shapes["model.0.weight"] == ((5, 6), torch.float32)
    assert shapes["model.seen"] == ((1,), torch.int64)
    assert shapes["model.scale"] == ((3,), torch.bfloat16)
    assert shapes["optim.state.0.exp_avg"] == ((5, 6), torch.float32)

    fresh, fresh_optim = _model_and_optimizer()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    template = {"model": fresh.state_dict(), "optim": fresh_optim.state_dict(), "epoch": 0}
    template["optim"]["param_groups"][0]["lr"] = 99.0
    load_sharded(tmp_path, template)
    for key, value in saved["model"].items():
        assert torch.equal(template["model"][key], value), key
    for index, state in saved["optim"]["state"].items():
        for name, value in state.items():
            assert torch.equal(template["optim"]["state"][index][name], value), (index, name)
    assert template["optim"]["param_groups"][0]["lr"] == 1e-2  # a plain value, via the planner
    assert template["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert template["epoch"] == 3


def test_malicious_metadata_is_refused_before_it_runs(tmp_path: Path) -> None:
    model = nn.Linear(4, 4)
    manager = CheckpointManager(tmp_path / "ckpt", fsync=False)
    step_dir = manager.save(1, sharded_state={"model": model.state_dict()})
    metadata = step_dir / "sharded" / ".metadata"
    sentinel = tmp_path / "sentinel"
    metadata.write_bytes(pickle.dumps(_Payload(sentinel)))
    (step_dir / MANIFEST_NAME).unlink()
    write_manifest(step_dir, 1, 1, checksums=True, fsync=False)

    with pytest.raises(pickle.UnpicklingError) as err:
        manager.load(step_dir, sharded_state={"model": model.state_dict()})
    assert str(metadata) in str(err.value)
    assert "builtins.exec" in str(err.value)
    assert not sentinel.exists()
    for read in (read_sharded_metadata, read_dcp_metadata):  # and the other entry points
        with pytest.raises(pickle.UnpicklingError, match=r"builtins\.exec"):
            read(step_dir / "sharded")
    assert not sentinel.exists()


def test_metadata_that_is_not_dcp_metadata_is_corrupt(tmp_path: Path) -> None:
    save_sharded(tmp_path, {"w": torch.ones(2)})
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    with pytest.raises(CorruptCheckpointError, match="holds a dict, not DCP"):
        read_dcp_metadata(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptCheckpointError, match=r"\.metadata: malformed"):
        read_dcp_metadata(tmp_path)


def test_malicious_plain_value_in_dcp_data_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    save_sharded(tmp_path / "dcp", {"w": torch.ones(2), "extra": _Payload(sentinel)})
    assert not sentinel.exists()
    template: dict[str, Any] = {"w": torch.zeros(2), "extra": None}
    with pytest.raises(pickle.UnpicklingError) as err:
        load_sharded(tmp_path / "dcp", template)
    assert "'extra'" in str(err.value)
    assert str(tmp_path / "dcp") in str(err.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "extra.pt", "rng_rank0.pt"])
def test_refused_pickle_in_a_step_names_the_file(name: str, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpt", fsync=False)
    step_dir = manager.save(1, optimizer_state={"lr": 1.0}, extra={"epoch": 1})
    target = step_dir / name
    sentinel = tmp_path / "sentinel"
    torch.save(_Payload(sentinel), target)
    (step_dir / MANIFEST_NAME).unlink()  # re-sign, as whoever planted it could
    write_manifest(step_dir, 1, 1, checksums=True, fsync=False)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as err:
        CheckpointManager(tmp_path / "ckpt").load(step_dir, checksums=True)
    assert str(target) in str(err.value)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not sentinel.exists()


def test_refused_legacy_adapter_bin_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    sentinel = tmp_path / "sentinel"
    torch.save({"x": _Payload(sentinel)}, tmp_path / "adapter_model.bin")
    with pytest.raises(pickle.UnpicklingError) as err:
        load_peft_adapter(tmp_path)
    assert str(tmp_path / "adapter_model.bin") in str(err.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_step_file_names_the_file(damage: str, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpt", fsync=False)
    step_dir = manager.save(1, optimizer_state={"lr": torch.ones(64)}, extra={"epoch": 1})
    target = step_dir / "optimizer.pt"
    data = target.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"not a torch file", "empty": b""}
    target.write_bytes(damaged[damage])
    (step_dir / MANIFEST_NAME).unlink()  # a manifest without checksums cannot catch it
    write_manifest(step_dir, 1, 1, checksums=False, fsync=False)
    with pytest.raises(CorruptCheckpointError, match=r"not a readable torch\.save file") as err:
        CheckpointManager(tmp_path / "ckpt").load(step_dir, checksums=False)
    assert str(target) in str(err.value)
    assert f"({len(damaged[damage])} bytes;" in str(err.value)
