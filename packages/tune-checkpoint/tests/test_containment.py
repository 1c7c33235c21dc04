"""Paths read from checkpoint files (index, manifest, DCP metadata, adapter dir) stay inside."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from tune.checkpoint import (
    CheckpointManager,
    UnsafeCheckpointPathError,
    ensure_inside,
    load_peft_adapter,
    load_safetensors_dir,
    read_sharded_metadata,
    save_peft_adapter,
    save_safetensors_dir,
    write_safetensors_file,
)


def test_ensure_inside_names_both_paths(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert ensure_inside("a/b.txt", tmp_path / "d", "shard") == tmp_path / "d" / "a" / "b.txt"
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(UnsafeCheckpointPathError, match=r"shard .* outside the directory"):
            ensure_inside(bad, tmp_path / "d", "shard")
    os.symlink(tmp_path, tmp_path / "d" / "up")
    with pytest.raises(UnsafeCheckpointPathError, match=str(tmp_path / "x")):
        ensure_inside("up/x", tmp_path / "d")


def test_hf_cache_snapshot_symlinks_into_blobs_are_allowed(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    write_safetensors_file(repo / "blobs" / "f00d", {"w": torch.ones(2)})
    os.symlink("../../blobs/f00d", snapshot / "model.safetensors")
    assert torch.equal(load_safetensors_dir(snapshot)["w"], torch.ones(2))


def test_symlinked_single_weight_file_outside_is_refused(tmp_path: Path) -> None:
    write_safetensors_file(tmp_path / "secret.safetensors", {"w": torch.ones(2)})
    (tmp_path / "ckpt").mkdir()
    os.symlink(tmp_path / "secret.safetensors", tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(UnsafeCheckpointPathError, match=r"weight file 'model\.safetensors'"):
        load_safetensors_dir(tmp_path / "ckpt")


def test_manifest_file_symlinked_outside_is_refused(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpt", fsync=False)
    step = manager.save(1, extra={"a": 1})
    (tmp_path / "outside.pt").write_bytes((step / "extra.pt").read_bytes())
    (step / "extra.pt").unlink()
    os.symlink(tmp_path / "outside.pt", step / "extra.pt")
    with pytest.raises(UnsafeCheckpointPathError, match=r"extra\.pt"):
        manager.load(step)
    assert manager.latest() is None  # skipped, with a warning


def test_peft_adapter_files_symlinked_outside_are_refused(tmp_path: Path) -> None:
    config = {"r": 2, "lora_alpha": 4, "target_modules": ["q"]}
    save_peft_adapter(tmp_path / "real", {"q.lora_A.weight": torch.ones(2, 3)}, config)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "adapter_config.json").write_text(json.dumps(config))
    os.symlink(
        tmp_path / "real" / "adapter_model.safetensors",
        tmp_path / "evil" / "adapter_model.safetensors",
    )
    with pytest.raises(UnsafeCheckpointPathError, match="adapter weights"):
        load_peft_adapter(tmp_path / "evil")


def test_dcp_metadata_relative_path_escaping_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    import torch.distributed.checkpoint as dcp

    directory = tmp_path / "dcp"
    dcp.save({"w": torch.ones(4)}, checkpoint_id=str(directory), no_dist=True)
    assert "w" in read_sharded_metadata(directory)
    path = directory / ".metadata"
    with open(path, "rb") as f:
        metadata = pickle.load(f)  # our own file, written just above
    info = next(iter(metadata.storage_data.values()))
    info.relative_path = "../../etc/x"
    with open(path, "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(UnsafeCheckpointPathError, match=r"data file of 'w'.*'\.\./\.\./etc/x'"):
        read_sharded_metadata(directory)


def test_index_weight_map_value_must_be_a_string(tmp_path: Path) -> None:
    save_safetensors_dir(tmp_path, {"a": torch.ones(4), "b": torch.ones(4)}, max_shard_size=16)
    index = tmp_path / "model.safetensors.index.json"
    body = json.loads(index.read_text())
    body["weight_map"]["a"] = ["model-00001-of-00002.safetensors"]
    index.write_text(json.dumps(body))
    with pytest.raises(Exception, match=r"weight_map\['a'\].*expected a file name string"):
        load_safetensors_dir(tmp_path)
