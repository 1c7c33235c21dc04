"""`tune init`: every path the bundled tiny configs read, written once, kept, replaced on --force,
never half-written; each tiny config then validates from that directory with no override."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest

import tune.recipes
from tune.recipes.cli import main

CONFIGS = Path(tune.recipes.__file__).parent / "configs"
TINY_CONFIGS = sorted(CONFIGS.glob("*/tiny*.yaml"))
# Every path those configs read (checked against them below).
TINY_WORKSPACE = [
    "checkpoints/tiny", "checkpoints/tiny_teacher", "checkpoints/tiny_student", "checkpoints/tiny_moe",
    "data/tiny_instructions.jsonl", "data/tiny_preferences.jsonl", "data/tiny_unpaired.jsonl",
    "data/arithmetic.jsonl",
]  # fmt: skip


def _digests(root: Path) -> dict[str, str]:
    """Every file under root (hidden debris included) -> its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory `tune init` filled, and what it printed (capsys is per test)."""
    root = tmp_path_factory.mktemp("init") / "work"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["init", str(root)]) == 0
    return root, out.getvalue()


def test_init_writes_every_path_the_tiny_configs_name(initialized: tuple[Path, str]) -> None:
    root, out = initialized
    named = set()
    for config in TINY_CONFIGS:
        text = config.read_text()
        named |= {p for p in TINY_WORKSPACE if f" {p}\n" in text}
        for line in text.splitlines():  # every local input path of the config is covered
            value = line.partition(":")[2].strip()
            if value.startswith(("checkpoints/", "data/")):
                assert value in TINY_WORKSPACE, f"{config.name}: {value} is not made by tune init"
    assert named == set(TINY_WORKSPACE)  # and tune init makes no path no config reads
    for relative in TINY_WORKSPACE:
        assert (root / relative).exists(), relative
        assert f"made     {root / relative}: " in out
    for name in ("tiny", "tiny_teacher", "tiny_student"):
        ckpt = root / "checkpoints" / name
        assert {p.name for p in ckpt.iterdir()} == {
            "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json",
        }  # fmt: skip
    # Distillation needs one vocabulary: teacher and student share the base's tokenizer.
    tokenizers = {(root / "checkpoints" / n / "tokenizer.json").read_bytes() for n in
                  ("tiny", "tiny_teacher", "tiny_student")}  # fmt: skip
    assert len(tokenizers) == 1
    sizes = [json.loads((root / "checkpoints" / n / "config.json").read_text())["hidden_size"]
             for n in ("tiny_teacher", "tiny_student")]  # fmt: skip
    assert sizes == [128, 64]
    rows = (root / "data" / "tiny_instructions.jsonl").read_text().splitlines()
    assert len(rows) == 2000
    assert set(json.loads(rows[0])) >= {"instruction", "input", "output"}
    assert not [p for p in root.rglob(".*")], "temporary files left behind"


def test_second_init_keeps_everything_and_force_rewrites_it(
    initialized: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = initialized
    before = _digests(root)
    assert main(["init", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("kept     ") == len(TINY_WORKSPACE)
    assert "(exists; --force replaces it)" in out
    assert "made " not in out
    assert _digests(root) == before
    # --force replaces a damaged file (and everything else) with the same deterministic content.
    copy = tmp_path / "work"
    assert main(["init", str(copy)]) == 0
    (copy / "data" / "tiny_preferences.jsonl").write_text("damaged\n")
    (copy / "checkpoints" / "tiny" / "model.safetensors").write_bytes(b"damaged")
    assert main(["init", str(copy), "--force"]) == 0
    assert capsys.readouterr().out.count("replaced ") == len(TINY_WORKSPACE)
    assert _digests(copy) == before


def test_a_failed_init_leaves_no_half_written_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tune.recipes.tiny_workspace as workspace

    def disk_full(directory: Path, *args: object, **kwargs: object) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workspace, "save_hf_checkpoint", disk_full)
    with pytest.raises(OSError, match="No space left"):
        workspace.init_tiny_workspace(tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no tiny/, no .tiny.tmp-<pid>/
    monkeypatch.undo()
    assert [s for _, s in workspace.init_tiny_workspace(tmp_path)][:1] == ["made"]


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_tiny_config_validates_from_the_init_directory(
    config: Path,
    initialized: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = initialized
    monkeypatch.chdir(root)
    name = f"{config.parent.name}/{config.stem}"
    world = ["--world-size", "2"] if config.stem.endswith("_2proc") else []
    assert main(["validate", name, "--paths", "error", *world]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("OK: "), out  # no warning line before it
