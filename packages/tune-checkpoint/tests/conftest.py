"""Shared fixtures: a tiny random `transformers` Llama and its config."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_llama_config(**overrides):
    """A 2-layer, hidden-32 Llama config (random weights, no download)."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


@pytest.fixture
def tiny_llama():
    """Factory `tiny_llama(seed, **config_overrides)` of tiny random `LlamaForCausalLM`s."""
    return _tiny_llama
