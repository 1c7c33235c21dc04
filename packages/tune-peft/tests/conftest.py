"""Shared fixtures: one thread, fixed seeds, tiny random-weight transformers models."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 256


@pytest.fixture(autouse=True)
def _one_thread_seeded() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def make_tiny_llama(
    *, tie: bool = False, seed: int = 0, hidden_size: int = 32, num_layers: int = 2
) -> LlamaForCausalLM:
    """A Llama (default: 2 layers, hidden 32) with random weights, in eval mode, float32."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def logits_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def train_steps(
    model: nn.Module, tokens: torch.Tensor, steps: int, lr: float = 1e-2
) -> list[float]:
    """A few AdamW steps of next-token loss on `tokens`; returns the losses."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def randomize_adapters(model: nn.Module, seed: int = 3) -> None:
    """Give every adapter tensor (and DoRA magnitude) non-trivial random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(param.shape, generator=gen) * 0.1
                if name.endswith("lora_magnitude_vector"):
                    param.mul_(1 + noise)
                else:
                    param.copy_(noise)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pristine_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


@pytest.fixture
def helpers() -> types.SimpleNamespace:
    """The functions above, for tests (conftest modules are not importable under importlib mode)."""
    return types.SimpleNamespace(
        make_tiny_llama=make_tiny_llama,
        logits_of=logits_of,
        train_steps=train_steps,
        randomize_adapters=randomize_adapters,
        clone_state=clone_state,
        pristine_copy=pristine_copy,
    )
