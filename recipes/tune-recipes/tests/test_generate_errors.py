"""Bad generate configs, prompt files and adapters fail with messages naming key, line or tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tune.checkpoint import save_peft_adapter
from tune.config import ConfigError, ConfigValidationError
from tune.data import PromptInputError
from tune.peft import AdapterMismatchError, LoraConfig, apply_lora, export_peft_adapter
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.generate.config import GenerateConfig
from tune.recipes.generate.loop import run
from tune_testing import make_tiny_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base (hidden 64, 2 layers) and adapters made for other bases."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("generate_errors")
    base = make_tiny_checkpoint(root / "base", vocab_size=300)
    narrow = make_tiny_checkpoint(root / "narrow", vocab_size=300, hidden_size=32)
    deep = make_tiny_checkpoint(root / "deep", vocab_size=300, num_layers=3)
    out = {"base": base, "root": root}
    for name, other in (("narrow", narrow), ("deep", deep)):
        ckpt = load_pretrained(other, dtype=torch.float32, device=CPU)
        apply_lora(ckpt.model, LoraConfig(r=4, targets=["q_proj", "v_proj"]), activate=True)
        tensors, config = export_peft_adapter(
            ckpt.model, key_map=ckpt.native_to_hf_key, base_model_name_or_path=str(other)
        )
        out[f"{name}_adapter"] = save_peft_adapter(
            root / f"{name}_adapter", tensors, config, prefix=""
        )
    return out


def _load(base: Path, *overrides: str) -> GenerateConfig:
    path, _ = find_config("generate/tiny_cpu", "generate")
    return load_config(path, GenerateConfig, [f"model.checkpoint_dir={base}",
                                              "output.print=false", *overrides])  # fmt: skip


def _errors(base: Path, *overrides: str) -> dict[str, str]:
    with pytest.raises(ConfigValidationError) as info:
        _load(base, *overrides)
    return {i.key: i.message for i in info.value.issues if i.severity == "error"}


def test_missing_prompts_names_the_key(dirs: dict[str, Path]) -> None:
    errors = _errors(dirs["base"], "prompts.items=[]")
    assert "no prompts" in errors["prompts.items"]


def test_unknown_prompt_file_extension_is_named(dirs: dict[str, Path]) -> None:
    table = dirs["root"] / "prompts.csv"
    table.write_text("prompt\nhello\n")
    errors = _errors(dirs["base"], f"prompts.file={table}")
    assert "'.csv'" in errors["prompts.file"]
    assert ".jsonl" in errors["prompts.file"]


def test_range_and_input_errors_name_their_keys(dirs: dict[str, Path]) -> None:
    errors = _errors(
        dirs["base"], "sampling.top_p=1.5", "sampling.max_new_tokens=0", "batch_size=0",
        "sampling.temperature=-1", "output.file=out.json", "prompts.chat=false",
        "model.quantize=int8_weight_only", f"model.adapter_dir={dirs['narrow_adapter']}",
        "sampling.quantize=int8",
    )  # fmt: skip
    assert "(0, 1]" in errors["sampling.top_p"]
    assert "1.5" in errors["sampling.top_p"]
    assert "> 0" in errors["sampling.max_new_tokens"]
    assert "> 0" in errors["batch_size"]
    assert ">= 0" in errors["sampling.temperature"]
    assert ".jsonl" in errors["output.file"]
    # The bundled config's second item is a message list: raw mode cannot encode it.
    assert "prompts.chat=true" in errors["prompts.items.1"]
    assert "merge_adapter=true" in errors["model.quantize"]
    assert errors["sampling.quantize"] == (
        "int8 cannot be combined with model.quantize=int8_weight_only; set one"
    )


def test_bad_config_items_and_keys(dirs: dict[str, Path]) -> None:
    errors = _errors(dirs["base"], 'prompts.items=[{question: "hi"}, "  "]')
    assert "'prompt' or 'messages'" in errors["prompts.items.0"]
    assert "question" in errors["prompts.items.0"]
    assert "empty" in errors["prompts.items.1"]
    with pytest.raises(ConfigError, match=r"did you mean 'sampling.max_new_tokens'"):
        _load(dirs["base"], "sampling.max_new_token=5")
    with pytest.raises(ConfigError, match=r"sampling.quantize.*int4.*'none', 'int8'"):
        _load(dirs["base"], "sampling.quantize=int4")
    errors = _errors(dirs["base"], f"model.checkpoint_dir={dirs['narrow_adapter']}")
    assert "adapter_dir" in errors["model.checkpoint_dir"]


def test_bad_prompt_file_lines_name_file_and_line(dirs: dict[str, Path]) -> None:
    bad_json = dirs["root"] / "bad.jsonl"
    bad_json.write_text('{"prompt": "ok"}\n\n{"prompt": "unclosed\n')
    with pytest.raises(PromptInputError, match=rf"{bad_json}:3: malformed JSON"):
        run(_load(dirs["base"], f"prompts.file={bad_json}", "prompts.items=[]"))
    no_key = dirs["root"] / "nokey.jsonl"
    no_key.write_text('{"prompt": "ok"}\n{"text": "what?"}\n')
    with pytest.raises(PromptInputError, match=rf"{no_key}:2: expected exactly one of .*'text'"):
        run(_load(dirs["base"], f"prompts.file={no_key}", "prompts.items=[]"))
    blank = dirs["root"] / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(PromptInputError, match="holds no prompt"):
        run(_load(dirs["base"], f"prompts.file={blank}", "prompts.items=[]"))


def test_prompt_longer_than_the_context_is_named(dirs: dict[str, Path]) -> None:
    long_prompt = "word " * 1200  # > max_position_embeddings 1024 tokens
    with pytest.raises(PromptInputError, match=r"prompts.items.0: \d+ prompt tokens .* 1024"):
        run(_load(dirs["base"], f"prompts.items=['{long_prompt}']", "prompts.chat=false"))


def test_adapter_of_another_width_names_tensor_and_shapes(dirs: dict[str, Path]) -> None:
    config = _load(dirs["base"], f"model.adapter_dir={dirs['narrow_adapter']}")
    with pytest.raises(AdapterMismatchError) as info:
        run(config)
    message = str(info.value)
    assert "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'" in message
    assert "shape (4, 32)" in message
    assert "(64, 64)" in message
    assert "in_features=64" in message
    assert str(dirs["root"] / "narrow") in message  # the base the adapter was made for


def test_adapter_for_more_layers_names_the_missing_module(dirs: dict[str, Path]) -> None:
    config = _load(dirs["base"], f"model.adapter_dir={dirs['deep_adapter']}")
    with pytest.raises(
        AdapterMismatchError, match=r"'model.layers.2.self_attn.q_proj', which is no linear"
    ):
        run(config)


def test_adapter_dir_without_config_is_a_validation_error(dirs: dict[str, Path]) -> None:
    empty = dirs["root"] / "not_an_adapter"
    empty.mkdir(exist_ok=True)
    errors = _errors(dirs["base"], f"model.adapter_dir={empty}")
    assert "adapter_config.json" in errors["model.adapter_dir"]
    errors = _errors(dirs["base"], f"model.adapter_dir={dirs['root'] / 'missing'}")
    assert "not found" in errors["model.adapter_dir"]


def test_chat_without_a_template_names_the_keys(dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(dirs["base"], plain)
    config_file = plain / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    del tokenizer_config["chat_template"]
    config_file.write_text(json.dumps(tokenizer_config))
    with pytest.raises(ValueError, match=r"tokenizer.chat_template: .*prompts.chat=false"):
        run(_load(plain, "prompts.items=['hello']"))
    assert run(_load(plain, "prompts.items=['hello']", "prompts.chat=false"))["records"]
