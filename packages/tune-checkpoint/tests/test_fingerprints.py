"""Input fingerprints: which file changed, and how, between a checkpoint and a resume."""

from __future__ import annotations

from pathlib import Path

import pytest

import tune.checkpoint.fingerprints as fingerprints
from tune.checkpoint import TOKENIZER_FILES, changed_inputs, fingerprint_inputs


def _tokenizer_dir(root: Path) -> Path:
    root.mkdir()
    (root / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (root / "tokenizer_config.json").write_text('{"eos_token": "a"}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)  # weights are not a tokenizer file
    return root


def test_identical_files_compare_equal_and_select_keeps_only_named_files(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n{"a": 2}\n')
    tok = _tokenizer_dir(tmp_path / "tok")
    sources = {"data.source": data, "tokenizer.path": tok, "other": "org/hub-dataset", "no": None}
    prints = fingerprint_inputs(sources, select={"tokenizer.path": TOKENIZER_FILES})
    assert set(prints) == {"data.source", "tokenizer.path"}  # a Hub name has no local file
    assert sorted(Path(f).name for f in prints["tokenizer.path"]) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert prints["data.source"][str(data)]["size"] == data.stat().st_size
    assert (
        changed_inputs(
            prints, fingerprint_inputs(sources, select={"tokenizer.path": TOKENIZER_FILES})
        )
        == []
    )
    # Without a selection a directory contributes every (non-hidden) file in it.
    (tok / ".cache").write_text("x")
    assert len(fingerprint_inputs({"tokenizer.path": tok})["tokenizer.path"]) == 3


def test_same_size_edit_is_caught_by_content(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n')
    before = fingerprint_inputs({"data.source": data})
    data.write_text('{"a": 7}\n')
    assert changed_inputs(before, fingerprint_inputs({"data.source": data})) == [
        f"data.source: {data} changed content (same size, other sha256)"
    ]


def test_directory_sources_report_new_gone_and_resized_files(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text("1\n")
    (folder / "b.jsonl").write_text("2\n")
    before = fingerprint_inputs({"data.source": folder})
    (folder / "a.jsonl").write_text("1\n1\n")
    (folder / "b.jsonl").unlink()
    (folder / "c.jsonl").write_text("3\n")
    assert changed_inputs(before, fingerprint_inputs({"data.source": folder})) == [
        f"data.source: {folder / 'a.jsonl'} changed size (2 -> 4 bytes)",
        f"data.source: {folder / 'b.jsonl'} is gone",
        f"data.source: {folder / 'c.jsonl'} is new",
    ]


def test_a_name_the_checkpoint_never_fingerprinted_is_not_compared(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("1\n")
    assert changed_inputs({}, fingerprint_inputs({"data.source": data})) == []


def test_large_files_are_sampled_at_three_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fingerprints, "SAMPLED_ABOVE", 64)
    monkeypatch.setattr(fingerprints, "_WINDOW", 8)
    weights = tmp_path / "w.bin"
    weights.write_bytes(bytes(range(200)))
    before = fingerprint_inputs({"w": weights})
    assert str(before["w"][str(weights)]["sha256"]).startswith("sampled:")
    blob = bytearray(weights.read_bytes())
    blob[50] ^= 1  # outside the windows [0, 8), [100, 108), [192, 200): not seen by design
    weights.write_bytes(bytes(blob))
    assert changed_inputs(before, fingerprint_inputs({"w": weights})) == []
    blob[103] ^= 1  # inside the middle window
    weights.write_bytes(bytes(blob))
    assert changed_inputs(before, fingerprint_inputs({"w": weights})) == [
        f"w: {weights} changed content (same size, other sha256)"
    ]
