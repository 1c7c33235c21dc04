"""tune.peft on a tiny tune.models Llama: PEFT directories interoperate with transformers + peft.

The native model is built from the `config.json` of a random-weight transformers Llama and loaded
with its weights; an adapter trained on the native model (native module names such as
`layers.0.attn.q_proj`) is written in PEFT format through tune.models' native -> HF key map and
loaded by `peft.PeftModel` on the transformers model, and the reverse. Logits agree within 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

models = pytest.importorskip("tune.models")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from tune.peft import (  # noqa: E402
    LoraConfig,
    apply_lora,
    export_peft_adapter,
    load_peft_adapter,
    trainable_parameters,
)

_NEEDED = ("build_from_hf_config", "convert_hf_to_native", "native_to_hf_key")
if not all(hasattr(models, name) for name in _NEEDED):  # tune.models is developed in parallel
    pytest.skip(f"tune.models lacks {_NEEDED}", allow_module_level=True)

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(tmp_path: Path) -> tuple[nn.Module, nn.Module, Path]:
    """(transformers Llama, equal native tune model, checkpoint dir)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(config).eval()
    ckpt = tmp_path / "base"
    hf.save_pretrained(ckpt)
    native = models.build_from_hf_config(ckpt)
    native.load_state_dict(models.convert_hf_to_native(hf.state_dict(), ckpt), strict=True)
    return hf, native.eval(), ckpt


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


def _native_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


def _hf_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_native_model_matches_transformers(pair, tokens) -> None:
    hf, native, _ = pair
    assert (_native_logits(native, tokens) - _hf_logits(hf, tokens)).abs().max() < 1e-5


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapter_trained_on_tune_model_loads_in_peft(pair, tokens, tmp_path, use_dora) -> None:
    hf, native, ckpt = pair
    base_logits = _hf_logits(hf, tokens)
    key_map = models.native_to_hf_key(ckpt)
    targets = apply_lora(native, LoraConfig(r=4, alpha=8.0, use_dora=use_dora))
    assert "output" not in targets
    assert targets[:2] == ["layers.0.attn.q_proj", "layers.0.attn.k_proj"]
    optimizer = torch.optim.AdamW(trainable_parameters(native).values(), lr=1e-2)
    native.train()
    losses = []
    for _ in range(4):
        logits = native(tokens)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 256), tokens[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    native.eval()
    assert losses[-1] < losses[0]
    assert (_native_logits(native, tokens) - base_logits).abs().max() > 1e-3  # the adapter acts
    tensors, config = export_peft_adapter(native, key_map=key_map)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    out = tmp_path / "adapter"
    out.mkdir()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config))
    peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
    err = (_hf_logits(peft_model, tokens) - _native_logits(native, tokens)).abs().max().item()
    print(f"dora={use_dora}: tune model -> peft max |logit diff| = {err:.2e}")
    assert err < 1e-5


def test_peft_adapter_loads_into_tune_model(pair, tokens, tmp_path) -> None:
    hf, native, ckpt = pair
    base_logits = _hf_logits(hf, tokens)
    peft_model = peft.get_peft_model(
        hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                            init_lora_weights=False, use_dora=True)
    )  # fmt: skip
    peft_model.eval()
    assert (_hf_logits(peft_model, tokens) - base_logits).abs().max() > 1e-3  # random A and B
    peft_model.save_pretrained(str(tmp_path))
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    targets = load_peft_adapter(native, tensors, config, key_map=models.native_to_hf_key(ckpt))
    assert targets == [
        f"layers.{i}.{m}" for i in range(2) for m in ("attn.q_proj", "attn.v_proj", "mlp.down_proj")
    ]
    err = (_native_logits(native, tokens) - _hf_logits(peft_model, tokens)).abs().max().item()
    print(f"peft -> tune model max |logit diff| = {err:.2e}")
    assert err < 1e-5
