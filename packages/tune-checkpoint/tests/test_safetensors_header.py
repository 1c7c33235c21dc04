"""safetensors headers that lie are refused, naming the file and the tensor(s)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tune.checkpoint import CorruptCheckpointError, read_safetensors_header


def _write(
    path: Path, header: dict[str, object], data: bytes, header_len: int | None = None
) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def _f32(begin: int, end: int, shape: list[int]) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"__metadata__": ["format", "pt"], "a": _f32(0, 8, [2])}, "__metadata__ is a list"),
        (
            {"__metadata__": {"format": 1}, "a": _f32(0, 8, [2])},
            r"__metadata__\['format'\] is a int",
        ),
        (
            {"a": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}},
            "'a' has unknown dtype 'F12'",
        ),
        ({"a": _f32(8, 0, [2])}, r"'a' has data_offsets \[8, 0\]"),
        (
            {"a": _f32(0, 4, [2]), "b": _f32(4, 8, [1])},
            r"'a' has data_offsets \[0, 4\] but shape \[2\]",
        ),
        ({"a": _f32(0, 8, [2]), "b": _f32(4, 8, [1])}, "tensors 'a' .* and 'b' .* overlap"),
        ({"a": _f32(0, 16, [4])}, "truncated: tensor 'a' ends at data byte 16"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "shape .* non-negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, "data_offsets .* expected"),
        ({"a": "F32"}, "'a' has header entry 'F32'"),
    ],
)
def test_lying_headers_are_refused(tmp_path: Path, header: dict[str, object], message: str) -> None:
    path = _write(tmp_path / "x.safetensors", header, bytes(8))
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        read_safetensors_header(path)
    assert str(path) in str(info.value)


def test_overlap_hidden_behind_an_empty_tensor_is_found(tmp_path: Path) -> None:
    header = {"a": _f32(0, 16, [4]), "e": _f32(4, 4, [0]), "c": _f32(8, 16, [2])}
    path = _write(tmp_path / "x.safetensors", header, bytes(16))
    with pytest.raises(CorruptCheckpointError, match=r"tensors 'a' .* and 'c' .* overlap"):
        read_safetensors_header(path)


def test_header_length_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", {"a": _f32(0, 8, [2])}, bytes(8), header_len=10_000)
    with pytest.raises(CorruptCheckpointError, match="header claims 10000 bytes"):
        read_safetensors_header(path)


def test_valid_header_with_metadata_and_empty_tensor(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt"}, "a": _f32(0, 8, [2]), "e": _f32(8, 8, [0, 3])}
    parsed = read_safetensors_header(_write(tmp_path / "x.safetensors", header, bytes(8)))
    assert parsed.metadata == {"format": "pt"}
    assert set(parsed.tensors) == {"a", "e"}
