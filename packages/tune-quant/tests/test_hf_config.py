"""HF config.json quantization_config as transformers writes it; exported directories load in transformers."""

from __future__ import annotations

import json

import pytest
import torch

from tune.quant import (
    get_scheme,
    hf_quantization_config,
    quantize_model,
    read_hf_quantization_config,
    save_quantized,
    write_hf_quantization_config,
)

transformers = pytest.importorskip("transformers")

HF_LOADABLE = ["int8_weight_only", "int8_dynamic_int8_weight", "int8_dynamic_int4_weight"]


@pytest.mark.parametrize("scheme", HF_LOADABLE)
def test_dict_equals_transformers_torchao_config_to_dict(scheme: str) -> None:
    config = get_scheme(scheme).devices["cpu"].ptq_config()
    reference = transformers.TorchAoConfig(config, modules_to_not_convert=["lm_head"]).to_dict()
    ours = hf_quantization_config(scheme, modules_to_not_convert=["lm_head"])
    # Compare as JSON, the form config.json stores.
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(reference))
    # transformers reads it back into the same torchao config.
    parsed = transformers.TorchAoConfig.from_dict(ours)
    assert parsed.quant_type == config


def test_cpu_int4_prototype_config_is_not_exportable() -> None:
    # torchao 0.18's config_from_dict (which transformers uses) rejects the prototype config.
    with pytest.raises(
        ValueError, match=r"PrototypeInt4WeightOnlyConfig cannot be stored.*model.pt"
    ):
        hf_quantization_config("int4_weight_only", device="cpu")


def test_cuda_int4_config_serializes_like_transformers() -> None:
    # Building the CUDA config needs no GPU; only running it does.
    config = get_scheme("int4_weight_only").devices["cuda"].ptq_config()
    reference = transformers.TorchAoConfig(config).to_dict()
    ours = hf_quantization_config("int4_weight_only", device="cuda")
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(reference))
    assert ours["quant_type"]["default"]["_type"] == "Int4WeightOnlyConfig"


def _tiny_llama(tmp_path):
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "float")
    return model


@pytest.mark.parametrize("scheme", HF_LOADABLE)
def test_exported_directory_loads_in_transformers_bit_exact(scheme, tmp_path) -> None:
    model = _tiny_llama(tmp_path)
    quantize_model(model, scheme, exclude=["lm_head"])
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(tokens).logits
    out = tmp_path / "quantized"
    model.config.save_pretrained(out)
    save_quantized(model, out / "model.safetensors")
    write_hf_quantization_config(
        out, hf_quantization_config(scheme, modules_to_not_convert=["lm_head"])
    )

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    weight = loaded.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__name__ == type(model.model.layers[0].self_attn.q_proj.weight).__name__
    assert type(loaded.lm_head.weight) in (torch.Tensor, torch.nn.Parameter)
    with torch.no_grad():
        got = loaded(tokens).logits
    assert torch.equal(got, expected)


def test_write_and_read_back_keeps_other_keys(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    write_hf_quantization_config(tmp_path, hf_quantization_config("int8_dynamic_int4_weight"))
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "llama"
    assert data["hidden_size"] == 64
    assert data["quantization_config"]["quant_method"] == "torchao"
    assert (
        read_hf_quantization_config(tmp_path)
        == get_scheme("int8_dynamic_int4_weight").devices["cpu"].ptq_config()
    )


def test_config_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no HF config\.json"):
        write_hf_quantization_config(tmp_path, hf_quantization_config("int8_weight_only"))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object, found list"):
        write_hf_quantization_config(tmp_path, hf_quantization_config("int8_weight_only"))
    (tmp_path / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}})
    )
    with pytest.raises(ValueError, match="'bitsandbytes', not 'torchao'"):
        read_hf_quantization_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert read_hf_quantization_config(tmp_path) is None
