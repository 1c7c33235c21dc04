"""GGUF through the recipes: sft writes GGUF files (`checkpointing.save_gguf`), `tune export`
merges an adapter on the way, and `tune convert` / `model.checkpoint_dir=<file>.gguf` read GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tune.config import ConfigValidationError
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.sft.config import SFTConfig
from tune_testing import TinyAssets, run_in_process, run_tune, tiny_overrides

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

CPU = torch.device("cpu")
SHORT = ("training.max_steps=3", "training.lr_schedule.warmup_steps=1", "eval.every_n_steps=null")


def _logits(model_dir: Path, tokens: torch.Tensor, gguf_file: str | None = None) -> torch.Tensor:
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, **kwargs
    )
    with torch.no_grad():
        return model(input_ids=tokens).logits  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def lora_run(tiny_assets: TinyAssets, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gguf_run")
    return run_in_process(  # type: ignore[no-any-return]
        "sft", "sft/tiny_cpu_lora",
        tiny_overrides(tiny_assets, out, *SHORT, "checkpointing.save_merged=true",
                       "checkpointing.save_gguf=[f32,q8_0]"),
    )  # fmt: skip


def test_save_gguf_writes_files_transformers_reads_as_the_merged_model(lora_run: dict) -> None:
    files = [Path(f) for f in lora_run["gguf_files"]]
    assert [f.name for f in files] == ["model-f32.gguf", "model-q8_0.gguf"]
    for f in files:
        assert (f.parent / "Modelfile").is_file()
        assert f"FROM ./{f.name}" in (f.parent / "Modelfile").read_text()
    model_dir = Path(lora_run["model_dir"])
    tokens = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    merged = _logits(model_dir, tokens)
    f32 = _logits(files[0].parent, tokens, files[0].name)
    q8 = _logits(files[1].parent, tokens, files[1].name)
    assert (f32 - merged).abs().max().item() < 1e-5
    # Q8_0 moves each weight by at most half a step of its block's scale: close, not equal.
    assert 0 < (q8 - merged).abs().max().item() < 0.05 * merged.abs().max().item()


def test_tune_export_merges_an_adapter_like_the_recipe(lora_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "export" / "adapter-f32.gguf"
    out.parent.mkdir()
    done = run_tune("export", lora_run["adapter_dir"], str(out), "--type", "f32")
    assert done.returncode == 0, done.stderr
    tokens = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(1))
    recipe = Path(lora_run["gguf_files"][0])
    torch.testing.assert_close(
        _logits(out.parent, tokens, out.name),
        _logits(recipe.parent, tokens, recipe.name),
        rtol=0, atol=1e-5,
    )  # fmt: skip
    again = run_tune("export", lora_run["adapter_dir"], str(out), "--type", "f32")
    assert (again.returncode, "exists" in again.stderr) == (2, True)  # no silent overwrite
    bad = run_tune("export", lora_run["model_dir"], str(tmp_path / "x.gguf"), "--type", "q3")
    assert (bad.returncode, "--type must be one of" in bad.stderr) == (2, True)


def test_convert_and_gguf_checkpoint_dir_train_like_the_hf_directory(
    tiny_assets: TinyAssets, lora_run: dict, tmp_path: Path
) -> None:
    gguf_file = Path(lora_run["gguf_files"][0])
    converted = tmp_path / "converted"
    done = run_tune("convert", str(gguf_file), str(converted))
    assert done.returncode == 0, done.stderr
    ours = load_pretrained(converted, dtype=torch.float32, device=CPU).model.state_dict()
    merged = load_pretrained(lora_run["model_dir"], dtype=torch.float32, device=CPU)
    for name, tensor in merged.model.state_dict().items():
        assert torch.equal(ours[name], tensor), name

    # The same short run from the GGUF file and from the HF directory: identical losses.
    losses = []
    for source in (str(gguf_file), lora_run["model_dir"]):
        out = tmp_path / f"run-{len(losses)}"
        run_in_process(
            "sft", "sft/tiny_cpu_lora",
            [*tiny_overrides(tiny_assets, out, *SHORT), f"model.checkpoint_dir={source}",
             f"tokenizer.path={lora_run['model_dir']}"],
        )  # fmt: skip
        records = (out / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(r)["loss"] for r in records if '"loss"' in r])
    assert losses[0] == losses[1]


def test_gguf_settings_are_checked_before_anything_loads(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    base = tiny_overrides(tiny_assets, tmp_path / "out")
    cases = {
        f"model.checkpoint_dir={not_gguf}": "is not a GGUF file",
        f"model.checkpoint_dir={tmp_path / 'missing.gguf'}": "missing.gguf",
        "checkpointing.save_gguf=[q8_0]": "set checkpointing.save_merged=true",
        "checkpointing.save_gguf=[q3]": "must be one of",
    }
    for override, message in cases.items():
        extra = [f"checkpointing.save_merged={'q3' in override}".lower()]
        with pytest.raises(ConfigValidationError, match=message):
            load_config(find_config("sft/tiny_cpu_lora", "sft")[0], SFTConfig,
                        [*base, *extra, override], recipe="sft")  # fmt: skip
