"""tune.peft LoRA + tune.quant QAT: fake-quantized frozen base, trained adapters, merged then quantized.

The flow a QAT-LoRA recipe runs: `apply_lora` -> `prepare_qat` (the base weights of the LoRA layers
are fake-quantized, the adapters are not) -> train -> `convert_qat(merge_adapters=merge_and_unload)`.
The result must be exactly PTQ of the merged trained weights, with the base checkpoint's keys.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.peft import LoraConfig, LoRALinear, apply_lora, merge_and_unload, trainable_parameters
from tune.quant import convert_qat, is_quantized_weight, prepare_qat, quantize_model

pytestmark = pytest.mark.integration

DIM, HIDDEN, VOCAB = 64, 128, 256


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.ModuleDict(
            {n: nn.Linear(DIM, DIM, bias=False) for n in ("q_proj", "v_proj", "o_proj")}
        )
        self.mlp = nn.ModuleDict(
            {
                "up_proj": nn.Linear(DIM, HIDDEN, bias=False),
                "down_proj": nn.Linear(HIDDEN, DIM, bias=False),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        x = x + a["o_proj"](torch.tanh(a["q_proj"](x)) * a["v_proj"](x))
        return x + self.mlp["down_proj"](F.silu(self.mlp["up_proj"](x)))


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block() for i in range(2)})
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)  # (B, T, D)
        for layer in self.layers.values():
            x = layer(x)
        return self.output(x)  # (B, T, V)


@pytest.mark.parametrize("scheme", ["int8_dynamic_int4_weight", "int8_weight_only"])
def test_qat_lora_train_merge_convert(scheme: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM()
    base_keys = sorted(model.state_dict())
    adapted = apply_lora(model, LoraConfig(r=8, alpha=16, targets=["*.q_proj", "*.v_proj"]))
    prepared = prepare_qat(model, scheme, exclude=["output"])
    assert set(adapted) <= set(prepared)
    assert not any("lora_" in fqn for fqn in prepared)
    assert isinstance(model.get_submodule("layers.0.attn.q_proj"), LoRALinear)

    tokens = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(tokens, -1, dims=1)
    params = list(trainable_parameters(model).values())
    assert params
    assert all("lora_" in name for name in trainable_parameters(model))
    base_before = model.get_submodule(
        "layers.0.attn.q_proj"
    ).parametrizations.weight.original.clone()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    q_proj = model.get_submodule("layers.0.attn.q_proj")
    assert torch.equal(q_proj.parametrizations.weight.original, base_before)  # base frozen

    merged_float: dict[str, torch.Tensor] = {}

    def merge(m: nn.Module) -> None:
        merge_and_unload(m)
        merged_float.update({k: v.detach().clone() for k, v in m.state_dict().items()})

    convert_qat(model, merge_adapters=merge)
    assert sorted(model.state_dict()) == base_keys  # adapters merged away, base names kept
    for fqn in prepared:
        module = model.get_submodule(fqn)
        assert type(module) is nn.Linear, fqn
        assert is_quantized_weight(module.weight), fqn

    # Exactly PTQ of the merged trained weights with the scheme's convert config (on CPU these
    # schemes convert with their PTQ config).
    reference = TinyLM()
    reference.load_state_dict(merged_float)
    quantize_model(reference, scheme, exclude=["output"])
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))
