"""FlexAttention for packed documents on CUDA equals the dense-mask SDPA path."""

from __future__ import annotations

import pytest
import torch

from tune.models import build_from_hf_config, named_size_config


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["llama3.2-1b", "gemma2-2b"])
def test_flex_document_attention_matches_dense_mask(name: str) -> None:
    config = named_size_config(name)
    config.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, vocab_size=512)
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=48)
    torch.manual_seed(0)
    model = build_from_hf_config(config, device="cuda")
    lengths = [100, 28, 128]
    tokens = torch.randint(0, 512, (1, 256), device="cuda")
    docs = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None].cuda()
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    with torch.no_grad():
        flex = model(tokens, positions=positions, document_ids=docs)
        # An all-ones attention_mask forces the dense boolean-mask SDPA path.
        dense = model(
            tokens, positions=positions, document_ids=docs, attention_mask=torch.ones_like(tokens)
        )
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=1e-4)
