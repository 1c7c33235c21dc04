"""Incremental decoding through the KV cache gives the logits of a full forward."""

from __future__ import annotations

import pytest
import torch

from tune.models import cache_length, setup_kv_cache, teardown_kv_cache


def test_cached_decode_equals_full_forward(hf_and_native, batch, family: str) -> None:
    _, model = hf_and_native(family)
    tokens, mask, positions = batch([11, 7, 4], length=11, seed=11)
    prompt = 6  # prefill 6 tokens (rows 1-2 start with padding), then decode 5 one by one
    with torch.no_grad():
        full = model(tokens, positions=positions, attention_mask=mask)
        setup_kv_cache(model, batch_size=3, max_seq_len=16)
        try:
            steps = [
                model(
                    tokens[:, :prompt],
                    positions=positions[:, :prompt],
                    attention_mask=mask[:, :prompt],
                )
            ]
            for t in range(prompt, 11):
                steps.append(
                    model(
                        tokens[:, t : t + 1],
                        positions=positions[:, t : t + 1],
                        attention_mask=mask[:, : t + 1],
                    )
                )
            assert cache_length(model) == 11
        finally:
            teardown_kv_cache(model)
    incremental = torch.cat(steps, dim=1)
    real = mask.bool()
    err = (incremental[real] - full[real]).abs().max().item()
    assert err < 1e-5, f"{family}: cached decode differs from full forward by {err:.2e}"
    assert cache_length(model) is None
    assert not any("kv_cache" in k for k in model.state_dict())


def test_cache_overflow_and_batch_mismatch_are_reported(hf_and_native) -> None:
    _, model = hf_and_native("llama")
    setup_kv_cache(model, batch_size=2, max_seq_len=4)
    try:
        with pytest.raises(ValueError, match="KV cache overflow: 0 cached \\+ 5 new tokens"):
            model(torch.ones(2, 5, dtype=torch.long))
    finally:
        teardown_kv_cache(model)
    setup_kv_cache(model, batch_size=2, max_seq_len=4)
    try:
        with pytest.raises(ValueError, match="set up for batch size 2, got 3"):
            model(torch.ones(3, 2, dtype=torch.long))
    finally:
        teardown_kv_cache(model)


def test_cache_takes_the_local_head_count_of_a_tensor_parallel_rank() -> None:
    from tune.models.kv_cache import KVCache

    cache = KVCache(2, 8, 4, 3, torch.float32, "cpu")  # set up with the global 4 KV heads
    k, v = torch.randn(2, 2, 5, 3), torch.randn(2, 2, 5, 3)  # this rank computes 2 of them
    keys, values = cache.update(k, v)
    assert keys.shape == (2, 2, 8, 3)
    torch.testing.assert_close(keys[:, :, :5], k)
    torch.testing.assert_close(values[:, :, :5], v)
    k2 = torch.randn(2, 2, 1, 3)
    keys, _ = cache.update(k2, k2)
    torch.testing.assert_close(keys[:, :, 5:6], k2)
    assert cache.length == 6
