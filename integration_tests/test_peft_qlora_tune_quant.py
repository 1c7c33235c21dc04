"""QLoRA assembled from the libraries: a tune.models Llama, NF4 base by tune.quant, LoRA by tune.peft."""

from __future__ import annotations

import pytest
import torch
from torch import nn

models = pytest.importorskip("tune.models")
quant = pytest.importorskip("tune.quant")
transformers = pytest.importorskip("transformers")
from torchao.quantization import NF4Tensor  # noqa: E402

from tune.peft import LoraConfig, apply_lora, lora_modules, trainable_parameters  # noqa: E402

if not hasattr(models, "build_from_hf_config") or not hasattr(quant, "to_nf4_linear_weights"):
    pytest.skip("tune.models / tune.quant lack the builders used here", allow_module_level=True)

pytestmark = pytest.mark.integration


def _tiny_native_llama(tmp_path) -> nn.Module:
    torch.manual_seed(0)
    # Every projection is 128 x 128 or 128 x 256: a multiple of NF4's 16,384-element quantum.
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        tie_word_embeddings=False,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    return models.build_from_hf_config(tmp_path)


@pytest.mark.parametrize("order", ["quantize_then_lora", "lora_then_quantize"])
def test_qlora_trains_on_a_tune_model(order, tmp_path) -> None:
    torch.set_num_threads(1)
    model = _tiny_native_llama(tmp_path)
    model.requires_grad_(False)
    lora = LoraConfig(r=8, alpha=16.0, targets="all-linear")
    if order == "quantize_then_lora":
        quant.to_nf4_linear_weights(model, exclude=["output"])
        apply_lora(model, lora)
    else:
        apply_lora(model, lora)
        quant.to_nf4_linear_weights(model, exclude=["output"])
    layers = lora_modules(model)
    assert len(layers) == 14
    assert all(isinstance(m.weight, NF4Tensor) for m in layers.values())
    assert all(type(m.lora_A.weight) is nn.Parameter for m in layers.values())
    before = {n: m.weight.quantized_data.clone() for n, m in layers.items()}
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(20):
        logits = model(tokens)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 256), tokens[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"{order}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0] - 0.5
    for name, module in layers.items():
        assert torch.equal(module.weight.quantized_data, before[name]), name
