"""QAT through the sft config: prepare -> train -> convert -> a quantized HF directory.

The sft loop prepares the model when ``qat.scheme`` is set and, after training, converts it with
``write_quantized_output``; the tests compare against PTQ of the same model trained without QAT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tune.data import Tokenizer, build_sample_builder, make_loader, split_source
from tune.quant import (
    is_quantized_weight,
    prepare_qat,
    quantize_model,
    read_hf_quantization_config,
    read_quantization_manifest,
)
from tune.recipes.common.config_sections import LoRAConfig
from tune.recipes.common.finetune_method import prepare_for_method
from tune.recipes.common.generation_model import load_quantized_checkpoint
from tune.recipes.common.lora_settings import lora_config_from
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.common.qat_outputs import write_quantized_output
from tune.train.steps.token import evaluate_token_loss as evaluate
from tune.train.steps.token import micro_batch_loss
from tune_testing import TinyAssets, run_in_process, tiny_overrides

SCHEME = "int8_dynamic_int4_weight"
CPU = torch.device("cpu")


def _val_loss(model: nn.Module, assets: TinyAssets) -> float:
    """Held-out CE on the 10% the sft configs hold out (validation_fraction 0.1, seed 0)."""
    builder = build_sample_builder(
        Tokenizer.from_dir(assets.checkpoint_dir), "instruction", column_map={}, chat_template=None,
        train_on_input=False,
    )  # fmt: skip
    _, val = split_source(str(assets.data_file), "train", None, 0.1, 0)
    loader = make_loader(
        val, builder, batch_size=4, max_seq_len=256, packing=False, truncation="truncate",
        seed=0, shuffle=False, rank=0, world_size=1, endless=False,
    )  # fmt: skip
    return evaluate(model, loader, fused=False)


def load_quantized_output(directory: str | Path) -> nn.Module:
    """The native model of a quantized directory, as generate and eval load it."""
    return load_quantized_checkpoint(directory, dtype=torch.float32, device=CPU)[0].model


def _with_outlier_channels(src: Path, dst: Path, factor: float) -> Path:
    """A copy of ``src`` computing the same function, with one outlier input channel per group.

    Channel c of every RMSNorm gain is divided by ``factor`` and column c of the Linear layers
    that norm feeds is multiplied by it (c = 0, 32, 64, ...): float outputs are unchanged, but each
    int4 group of 32 inputs now has one large column that sets its scale, so plain rounding (PTQ)
    crushes the other 31; outlier channels like these are what real LLM activations show.
    """
    shutil.copytree(src, dst)
    state = load_file(str(src / "model.safetensors"))
    scale = torch.ones(state["model.embed_tokens.weight"].shape[1])
    scale[::32] = factor
    feeds = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip
    layers = {k.split(".")[2] for k in state if k.startswith("model.layers.")}
    for i in layers:
        for norm, linears in feeds.items():
            state[f"model.layers.{i}.{norm}.weight"] /= scale
            for linear in linears:
                state[f"model.layers.{i}.{linear}.weight"] *= scale
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _run_sft(assets: TinyAssets, out: Path, *extra: str) -> dict:
    """The real sft loop with ``qat.scheme`` set: it converts and writes ``quantized/`` at the end."""
    return run_in_process("sft", "sft/tiny_cpu_qat", tiny_overrides(assets, out, *extra))


def test_qat_quantized_model_beats_ptq_of_the_same_model(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    fast = ("eval.every_n_steps=null", "checkpointing.save_every_n_steps=null",
            "training.lr_schedule.warmup_steps=0")  # fmt: skip
    # A float model trained on the task, then given outlier channels (same function).
    pre = run_in_process("sft", "sft/tiny_cpu_full", tiny_overrides(
        tiny_assets, tmp_path / "pre", "training.max_steps=100", "training.optimizer.lr=2.0e-3",
        *fast))  # fmt: skip
    base_dir = _with_outlier_channels(Path(pre["model_dir"]), tmp_path / "base", 64.0)
    base = TinyAssets(base_dir, tiny_assets.data_file)
    plain = load_pretrained(pre["model_dir"], dtype=torch.float32, device=CPU).model
    outliers = load_pretrained(base_dir, dtype=torch.float32, device=CPU).model
    assert _val_loss(outliers, base) == pytest.approx(_val_loss(plain, base), abs=1e-4)

    # The same 30 steps from that base: without QAT then PTQ, and with QAT then convert.
    steps = ("training.max_steps=30", "training.optimizer.lr=1.0e-3", *fast)
    no_qat = run_in_process(
        "sft",
        "sft/tiny_cpu_qat",
        tiny_overrides(base, tmp_path / "float", "qat.scheme=null", *steps),
    )
    ptq = load_pretrained(no_qat["model_dir"], dtype=torch.float32, device=CPU).model
    quantize_model(ptq, SCHEME, exclude=["output"])
    ptq_loss = _val_loss(ptq, base)
    qat = _run_sft(base, tmp_path / "qat", *steps)
    quantized = load_quantized_output(qat["quantized_dir"])
    qat_loss = _val_loss(quantized, base)
    # Measured: float 2.866, PTQ 3.212, QAT 2.831 (held-out CE, nats).
    print(f"float {no_qat['val_loss']:.4f} ptq {ptq_loss:.4f} qat {qat_loss:.4f}")
    assert ptq_loss > no_qat["val_loss"] + 0.1, "the outlier channels must make PTQ hurt"
    assert qat_loss < ptq_loss - 0.1, (qat_loss, ptq_loss)
    # The converted weights compute what the fake-quantized model computed in training.
    assert qat_loss == pytest.approx(qat["val_loss"], rel=1e-4)

    # The directory: quantized Linear weights, float output head, HF quantization_config.
    directory = Path(qat["quantized_dir"])
    assert {p.name for p in directory.iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    }  # fmt: skip
    linears = {n: m for n, m in quantized.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 2 * 7 + 1
    assert all(is_quantized_weight(m.weight) == (n != "output") for n, m in linears.items())
    entry = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert entry["quant_method"] == "torchao"
    assert entry["modules_to_not_convert"] == ["lm_head"]
    assert type(read_hf_quantization_config(directory)).__name__ == (
        "Int8DynamicActivationIntxWeightConfig"
    )
    # The float outputs of the run are still written before conversion.
    assert (Path(qat["model_dir"]) / "model.safetensors").is_file()

    # The manifest of every quantized directory (`quantize` writes the same format).
    manifest = read_quantization_manifest(directory)
    assert (manifest.scheme, manifest.weights_file, manifest.hf_loadable) == (
        SCHEME, "model.safetensors", True
    )  # fmt: skip
    assert len(manifest.quantized_modules) == 2 * 7
    tokens = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(0))

    # transformers loads the directory as it is and computes the same logits.
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, quantized(tokens), atol=1e-5, rtol=1e-5)


def test_lora_qat_merges_adapters_before_quantizing(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    """LoRA: inject adapters first, then prepare_qat; conversion merges them, then quantizes."""
    torch.set_num_threads(1)
    ckpt = load_pretrained(tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU)
    model = ckpt.model
    lora = lora_config_from("lora", LoRAConfig(r=4, alpha=8.0, targets=["q_proj", "v_proj"]))
    prepare_for_method(model, "lora", lora)
    prepared = prepare_qat(model, SCHEME, exclude=["output"])
    assert len(prepared) == 2 * 7
    builder = build_sample_builder(
        Tokenizer.from_dir(tiny_assets.checkpoint_dir), "instruction", column_map={},
        chat_template=None, train_on_input=False,
    )  # fmt: skip
    train, _ = split_source(str(tiny_assets.data_file), "train", None, 0.1, 0)
    loader = make_loader(
        train, builder, batch_size=4, max_seq_len=256, packing=False, truncation="truncate",
        seed=0, shuffle=True, rank=0, world_size=1, endless=True,
    )  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = iter(loader)
    for _ in range(5):
        loss = micro_batch_loss(model, next(batches), fused=False)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    fake_quant_loss = _val_loss(model, tiny_assets)
    written = write_quantized_output(
        tmp_path, model, ckpt, tiny_assets.checkpoint_dir, scheme=SCHEME, method="lora", lora=lora
    )
    loaded = load_quantized_output(written["quantized_dir"])
    assert not any("lora" in k for k in loaded.state_dict())
    assert is_quantized_weight(loaded.layers["0"].attn.q_proj.weight)
    # Merged-then-quantized differs from fake-quantized base + float adapter only by rounding.
    assert _val_loss(loaded, tiny_assets) == pytest.approx(fake_quant_loss, rel=2e-2)


def test_a_model_without_fake_quantization_is_refused(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    ckpt = load_pretrained(tiny_assets.checkpoint_dir, dtype=torch.float32, device=CPU)
    with pytest.raises(ValueError, match=r"\('int4_weight_only'\): no layer .* fake quant"):
        write_quantized_output(
            tmp_path, ckpt.model, ckpt, tiny_assets.checkpoint_dir, scheme="int4_weight_only"
        )
    assert not (tmp_path / "quantized").exists()
