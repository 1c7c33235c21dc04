"""PEFT adapter directories: written here -> peft loads with equal logits; written by peft -> read
here with equal tensors and settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tune.checkpoint import StateDictMismatchError, load_peft_adapter, save_peft_adapter

peft = pytest.importorskip("peft")

TOKENS = torch.tensor([[3, 7, 11, 200, 42, 9]])
ADAPTER_CONFIG = {
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["q_proj", "v_proj"],
    "lora_dropout": 0.0,
    "bias": "none",
}


def _to_native(hf: str) -> str:
    return hf.removeprefix("model.").replace("self_attn", "attn")


def _to_hf(native: str) -> str:
    return "model." + native.replace("attn", "self_attn")


def _peft_model(tiny_llama):
    config = peft.LoraConfig(**ADAPTER_CONFIG, init_lora_weights=False)  # random B: a real delta
    torch.manual_seed(7)
    return peft.get_peft_model(tiny_llama(seed=0), config).eval()


def test_written_here_loads_in_peft_with_equal_logits(tmp_path: Path, tiny_llama) -> None:
    source = _peft_model(tiny_llama)
    peft_state = peft.get_peft_model_state_dict(source)
    native = {_to_native(k.removeprefix("base_model.model.")): v for k, v in peft_state.items()}
    assert "layers.0.attn.q_proj.lora_A.weight" in native
    save_peft_adapter(tmp_path, native, ADAPTER_CONFIG, key_map=_to_hf)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"

    loaded = peft.PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path).eval()
    with torch.no_grad():
        want = source(TOKENS).logits
        got = loaded(TOKENS).logits
        base = tiny_llama(seed=0)(TOKENS).logits
    assert not torch.equal(want, base)  # the adapter changes the output
    assert torch.equal(got, want)


def test_written_by_peft_reads_here(tmp_path: Path, tiny_llama) -> None:
    source = _peft_model(tiny_llama)
    source.save_pretrained(tmp_path)
    state, config = load_peft_adapter(tmp_path, key_map=_to_native)
    want = {
        _to_native(k.removeprefix("base_model.model.")): v
        for k, v in peft.get_peft_model_state_dict(source).items()
    }
    assert sorted(state) == sorted(want)
    assert all(torch.equal(state[k], v) for k, v in want.items())
    assert state["layers.1.attn.v_proj.lora_B.weight"].shape == (16, 4)  # [out, r], GQA k/v dim 16
    assert config["r"] == 4
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_bad_adapter_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lora_alpha"):
        save_peft_adapter(
            tmp_path / "a", {"x.lora_A.weight": torch.ones(1, 2)}, {"r": 1, "target_modules": ["x"]}
        )
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        load_peft_adapter(tmp_path)
    save_peft_adapter(
        tmp_path / "b", {"x.lora_A.weight": torch.ones(1, 2)}, ADAPTER_CONFIG, prefix=""
    )
    with pytest.raises(
        StateDictMismatchError, match=r"adapter_model\.safetensors.*'x\.lora_A\.weight'"
    ):
        load_peft_adapter(tmp_path / "b")
