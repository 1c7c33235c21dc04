"""Input fingerprints: which file changed, and how, between a checkpoint and a resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.recipes.common.input_fingerprints import changed_inputs, fingerprint_inputs
from tune.recipes.common.model_loading import check_vocab_fits


def _tokenizer_dir(root: Path) -> Path:
    root.mkdir()
    (root / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (root / "tokenizer_config.json").write_text('{"eos_token": "a"}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)  # weights are not a tokenizer file
    return root


def test_identical_files_compare_equal_and_weights_are_not_fingerprinted(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n{"a": 2}\n')
    tok = _tokenizer_dir(tmp_path / "tok")
    sources = {"data.source": data, "tokenizer.path": tok, "other": "org/hub-dataset"}
    prints = fingerprint_inputs(sources)
    assert set(prints) == {"data.source", "tokenizer.path"}  # a Hub name has no local file
    assert sorted(Path(f).name for f in prints["tokenizer.path"]) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert prints["data.source"][str(data)]["size"] == data.stat().st_size
    assert changed_inputs(prints, fingerprint_inputs(sources)) == []


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


def test_tokenizer_larger_than_the_embedding_is_refused_and_smaller_is_fine() -> None:
    check_vocab_fits(32000, 32064, tokenizer_dir="tok", checkpoint_dir="ckpt")  # padded rows
    with pytest.raises(ValueError, match=r"tok has 32100 ids .* ckpt embeds only 32064"):
        check_vocab_fits(32100, 32064, tokenizer_dir="tok", checkpoint_dir="ckpt")
