"""forward is compile-friendly: one graph (fullgraph=True) for plain, padded and packed batches."""

from __future__ import annotations

import pytest
import torch

from tune.models import build_from_hf_config, named_size_config


@pytest.mark.parametrize("name", ["llama3.2-1b", "gemma2-2b"])
def test_forward_compiles_without_graph_breaks(name: str) -> None:
    torch._dynamo.reset()
    config = named_size_config(name)
    config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=64)
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=3)
    model = build_from_hf_config(config)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    tokens = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]] * 2)
    for kwargs in ({}, {"attention_mask": mask}, {"document_ids": docs}):
        torch.testing.assert_close(
            compiled(tokens, **kwargs), model(tokens, **kwargs), atol=0, rtol=0
        )
    torch._dynamo.reset()
