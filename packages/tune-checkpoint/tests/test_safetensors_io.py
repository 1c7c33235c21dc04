"""Safetensors files and directories: bit-exact round trips, parity with the safetensors library,
clear errors for truncated files, missing shards and index names that escape the directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tune.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointPathError,
    iter_safetensors_dir,
    load_safetensors_dir,
    read_safetensors_file,
    read_weight_map,
    save_safetensors_dir,
    write_safetensors_file,
)


def _random_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 6, generator=g)
    return {
        "a.weight": torch.randn(16, 32, generator=g),
        "b.weight": torch.randn(7, 3, generator=g).to(torch.bfloat16),
        "c.bias": torch.randn(5, generator=g).half(),
        "d.index": torch.randint(-(2**40), 2**40, (4, 3), generator=g),
        "e.mask": torch.rand(9, generator=g) > 0.5,
        "f.bytes": torch.randint(0, 255, (11,), generator=g, dtype=torch.uint8),
        "g.scalar": torch.tensor(3.25, dtype=torch.float64),
        "h.empty": torch.empty(0, 4),
        "i.transposed": base.t(),  # non-contiguous
        "j.tied": base,  # shares storage with i.transposed
    }


def _assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert got[key].shape == tensor.shape, key
        # Compare raw bytes: equal values and equal bit patterns (signed zeros, NaN payloads).
        got_bytes = got[key].contiguous().view(-1).view(torch.uint8)
        want_bytes = tensor.contiguous().view(-1).view(torch.uint8)
        assert torch.equal(got_bytes, want_bytes), key


def test_single_file_round_trip_is_bit_exact_and_readable_by_safetensors(tmp_path: Path) -> None:
    state = _random_state()
    write_safetensors_file(tmp_path / "x.safetensors", state)
    _assert_bit_equal(read_safetensors_file(tmp_path / "x.safetensors"), state)
    # The reference library reads our file, and we read its files.
    _assert_bit_equal(safetensors.torch.load_file(tmp_path / "x.safetensors"), state)
    reference = {k: v.contiguous().clone() for k, v in state.items()}
    safetensors.torch.save_file(reference, tmp_path / "ref.safetensors")
    _assert_bit_equal(read_safetensors_file(tmp_path / "ref.safetensors"), state)


def test_sharded_directory_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = _random_state()
    files = save_safetensors_dir(tmp_path, state, max_shard_size=300)
    assert len(files) > 2
    assert next(f.name for f in files) == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(
        v.numel() * v.element_size() for v in state.values()
    )
    _assert_bit_equal(load_safetensors_dir(tmp_path), state)
    shards = list(iter_safetensors_dir(tmp_path))
    assert len(shards) == len(files)  # one shard in memory at a time
    # Saving again unsharded removes the old shards and index.
    save_safetensors_dir(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    _assert_bit_equal(load_safetensors_dir(tmp_path), state)


def test_dtype_conversion_applies_to_floating_point_only(tmp_path: Path) -> None:
    state = _random_state()
    save_safetensors_dir(tmp_path, state)
    got = load_safetensors_dir(tmp_path, dtype=torch.bfloat16)
    assert got["a.weight"].dtype == torch.bfloat16
    assert torch.equal(got["a.weight"], state["a.weight"].to(torch.bfloat16))
    assert got["d.index"].dtype == torch.int64
    assert got["e.mask"].dtype == torch.bool


@pytest.mark.parametrize("keep_bytes", [4, 60, -1])
def test_truncated_file_names_the_file_and_tensor(tmp_path: Path, keep_bytes: int) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors_file(path, {"w.first": torch.ones(64), "w.last": torch.ones(64)})
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes] if keep_bytes > 0 else data[: keep_bytes - 100])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors") as err:
        load_safetensors_dir(tmp_path)
    if keep_bytes < 0:
        assert "truncated" in str(err.value)
        assert "'w.last'" in str(err.value) or "'w.first'" in str(err.value)


def test_missing_shard_names_the_shard_and_its_keys(tmp_path: Path) -> None:
    state = {f"layer.{i}.weight": torch.full((64,), float(i)) for i in range(4)}
    files = save_safetensors_dir(tmp_path, state, max_shard_size=300)
    files[1].unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_safetensors_dir(tmp_path)
    assert files[1].name in str(err.value)
    assert "'layer.1.weight'" in str(err.value)


def test_index_that_points_at_a_key_the_shard_lacks(tmp_path: Path) -> None:
    state = {"a": torch.ones(64), "b": torch.zeros(64)}
    save_safetensors_dir(tmp_path, state, max_shard_size=300)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = index["weight_map"]["a"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="'ghost'"):
        load_safetensors_dir(tmp_path)


@pytest.mark.parametrize(
    "shard_name", ["../outside.safetensors", "/etc/passwd", "sub/../../x", "link.safetensors"]
)
def test_index_names_escaping_the_directory_are_refused(tmp_path: Path, shard_name: str) -> None:
    outside = tmp_path / "outside.safetensors"
    write_safetensors_file(outside, {"a": torch.ones(2)})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    os.symlink(outside, ckpt / "link.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": shard_name}})
    )
    with pytest.raises(UnsafeCheckpointPathError, match="ckpt"):
        read_weight_map(ckpt)


def test_symlink_inside_the_directory_is_allowed(tmp_path: Path) -> None:
    write_safetensors_file(tmp_path / "real.safetensors", {"a": torch.arange(3.0)})
    os.symlink(tmp_path / "real.safetensors", tmp_path / "alias.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "alias.safetensors"}})
    )
    assert torch.equal(load_safetensors_dir(tmp_path)["a"], torch.arange(3.0))


def test_no_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a safetensors checkpoint directory"):
        load_safetensors_dir(tmp_path)


def test_tensor_subclasses_are_refused_with_the_key(tmp_path: Path) -> None:
    class Wrapped(torch.Tensor):
        pass

    weird = torch.ones(4).as_subclass(Wrapped)
    with pytest.raises(TypeError, match=r"'layer\.weight' is a Wrapped, not a plain tensor"):
        write_safetensors_file(tmp_path / "x.safetensors", {"layer.weight": weird})
    assert not list(tmp_path.iterdir())
    # Parameters are plain tensors underneath.
    write_safetensors_file(tmp_path / "x.safetensors", {"p": torch.nn.Parameter(torch.ones(2))})
    assert torch.equal(read_safetensors_file(tmp_path / "x.safetensors")["p"], torch.ones(2))
