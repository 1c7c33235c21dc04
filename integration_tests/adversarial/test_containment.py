"""No path read from a file leads outside its directory (class: containment)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tune.checkpoint import (
    CheckpointManager,
    UnsafeCheckpointPathError,
    load_peft_adapter,
    read_sharded_metadata,
    save_peft_adapter,
    save_safetensors_dir,
)

from .conftest import SHORT, Assets, Expect, tune_cli

pytestmark = pytest.mark.integration

KLASS = "containment"


def _sharded_base(base: Path) -> dict:
    """Rewrite ``base``'s weights as two shards plus an index; returns the index body."""
    from safetensors.torch import load_file

    state = load_file(base / "model.safetensors")
    (base / "model.safetensors").unlink()
    size = sum(t.numel() * t.element_size() for t in state.values())
    save_safetensors_dir(base, state, max_shard_size=size // 2 + 1)
    return json.loads((base / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize(
    "escape", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors", "symlink"]
)
def test_an_index_entry_escaping_the_checkpoint_is_refused(
    escape: str,
    assets: Assets,
    base_copy: Callable[[str], Path],
    tmp_path: Path,
    expect: Expect,
) -> None:
    base = base_copy("base")
    index = _sharded_base(base)
    first_shard = sorted(set(index["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"
    shutil.move(base / first_shard, outside)  # a valid shard, one directory up
    name = {"ABSOLUTE": str(outside), "symlink": "link.safetensors"}.get(escape, escape)
    if escape == "symlink":
        os.symlink(outside, base / name)
    index["weight_map"] = {
        k: (name if v == first_shard else v) for k, v in index["weight_map"].items()
    }
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    argv = assets.argv("sft", tmp_path / "out", *SHORT, base=base)
    expect.refused(KLASS, argv, str(base), "refusing" if escape != "symlink" else "outside")


def test_an_index_entry_that_is_not_a_file_name_is_refused(
    assets: Assets, base_copy: Callable[[str], Path], tmp_path: Path, expect: Expect
) -> None:
    base = base_copy("base")
    index = _sharded_base(base)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = {"path": "/etc/passwd"}
    (base / "model.safetensors.index.json").write_text(json.dumps(index))
    argv = assets.argv("sft", tmp_path / "out", *SHORT, base=base)
    expect.refused(KLASS, argv, "weight_map", key)


def test_a_weights_file_symlinked_outside_is_refused(
    assets: Assets, base_copy: Callable[[str], Path], tmp_path: Path, expect: Expect
) -> None:
    base = base_copy("base")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(base / "model.safetensors", outside)
    os.symlink(outside, base / "model.safetensors")
    argv = assets.argv("sft", tmp_path / "out", *SHORT, base=base)
    expect.refused(KLASS, argv, "model.safetensors", "outside the directory")


@pytest.fixture(scope="module")
def quantized(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quantized") / "int8"
    argv = ["run", "quantize", "--config", "quantize/tiny_cpu_int8",
            f"model.checkpoint_dir={assets.base}", f"output_dir={out}"]  # fmt: skip
    status, err = tune_cli(argv)
    assert status == 0, err
    return out


@pytest.mark.parametrize("weights_file", ["../outside.safetensors", "ABSOLUTE", "symlink", 123])
def test_a_quantization_manifest_pointing_outside_is_refused(
    weights_file: object, quantized: Path, tmp_path: Path, expect: Expect
) -> None:
    qdir = Path(shutil.copytree(quantized, tmp_path / "q"))
    manifest = json.loads((qdir / "tune_quantization.json").read_text())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(qdir / manifest["weights_file"], outside)
    if weights_file == "ABSOLUTE":
        weights_file = str(outside)
    elif weights_file == "symlink":
        os.symlink(outside, qdir / "link.safetensors")
        weights_file = "link.safetensors"
    manifest["weights_file"] = weights_file
    (qdir / "tune_quantization.json").write_text(json.dumps(manifest))
    argv = ["run", "generate", "--config", "generate/tiny_cpu", f"model.checkpoint_dir={qdir}",
            "sampling.max_new_tokens=2"]  # fmt: skip
    expect.refused(KLASS, argv, "tune_quantization.json", "weights_file")


def test_dcp_metadata_pointing_outside_is_refused(tmp_path: Path, expect: Expect) -> None:
    import torch.distributed.checkpoint as dcp

    directory = tmp_path / "dcp"
    dcp.save({"w": torch.ones(4)}, checkpoint_id=str(directory), no_dist=True)
    path = directory / ".metadata"
    with open(path, "rb") as f:
        metadata = pickle.load(f)  # written by this test just above
    next(iter(metadata.storage_data.values())).relative_path = "../../etc/passwd"
    with open(path, "wb") as f:
        pickle.dump(metadata, f)
    expect.raises(KLASS, lambda: read_sharded_metadata(directory), UnsafeCheckpointPathError,
                  "'../../etc/passwd'", str(directory), "refusing")  # fmt: skip


def test_a_step_file_symlinked_outside_is_refused(tmp_path: Path, expect: Expect) -> None:
    manager = CheckpointManager(tmp_path / "ckpt", fsync=False)
    step = manager.save(1, extra={"a": 1})
    outside = tmp_path / "outside.pt"
    shutil.move(step / "extra.pt", outside)
    os.symlink(outside, step / "extra.pt")
    expect.raises(KLASS, lambda: manager.load(step), UnsafeCheckpointPathError, "extra.pt")


def test_adapter_weights_symlinked_outside_are_refused(tmp_path: Path, expect: Expect) -> None:
    config = {"r": 2, "lora_alpha": 4, "target_modules": ["q"]}
    save_peft_adapter(tmp_path / "real", {"q.lora_A.weight": torch.ones(2, 3)}, config)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "adapter_config.json").write_text(json.dumps(config))
    os.symlink(tmp_path / "real" / "adapter_model.safetensors",
               tmp_path / "evil" / "adapter_model.safetensors")  # fmt: skip
    expect.raises(KLASS, lambda: load_peft_adapter(tmp_path / "evil"), UnsafeCheckpointPathError,
                  "adapter")  # fmt: skip
