"""The ``attention_fn`` hook: a caller routes the attention core (after projections, norms and
RoPE) through its own function, as context parallelism does; the model stays unchanged."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tune.models import build_from_hf_config, named_size_config

LENGTHS = [5, 11, 8]  # three packed documents of one 24-token row


def _tiny(name: str, **extra: Any) -> torch.nn.Module:
    config = named_size_config(name)
    config.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128)
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    config.update(extra)
    torch.manual_seed(0)
    model = build_from_hf_config(config)
    model.init_weights(std=0.1)
    return model


def _set(model: torch.nn.Module, fn: Any) -> int:
    hooked = [m for m in model.modules() if hasattr(m, "attention_fn")]
    for m in hooked:
        m.attention_fn = fn
    return len(hooked)


def _per_document(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float):
    assert mask is None  # no document_ids given to the model: the hook does the masking
    parts = zip(*(t.split(LENGTHS, dim=2) for t in (q, k, v)), strict=True)
    outs = [
        F.scaled_dot_product_attention(a, b, c, is_causal=True, scale=scale, enable_gqa=True)
        for a, b, c in parts
    ]
    return torch.cat(outs, dim=2)


def test_attention_fn_replaces_the_core_with_explicit_positions() -> None:
    model = _tiny("llama3.2-1b")
    tokens = torch.randint(0, 128, (1, sum(LENGTHS)), generator=torch.Generator().manual_seed(1))
    docs = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])[None]
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    reference = model(tokens, positions=positions, document_ids=docs)
    seen: list[tuple] = []

    def recorded(q, k, v, mask, scale):  # type: ignore[no-untyped-def]
        seen.append((tuple(q.shape), tuple(k.shape), scale))
        return _per_document(q, k, v, mask, scale)

    assert _set(model, recorded) == 2
    got = model(tokens, positions=positions)  # no document_ids: masking left to the hook
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert seen == [((1, 4, 24, 16), (1, 2, 24, 16), 0.25)] * 2  # [B, H, T, D], [B, H_kv, T, D]
    _set(model, None)
    torch.testing.assert_close(model(tokens, positions=positions, document_ids=docs), reference)


def test_attention_fn_on_latent_attention_gets_one_head_width() -> None:
    model = _tiny(
        "deepseek-v3",
        q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=16,
        v_head_dim=20, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        n_group=1, topk_group=1, first_k_dense_replace=2, num_key_value_heads=4,
    )  # fmt: skip
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    reference = model(tokens)
    widths: list[tuple[int, int, int]] = []

    def sdpa(q, k, v, mask, scale):  # type: ignore[no-untyped-def]
        widths.append((q.shape[-1], k.shape[-1], v.shape[-1]))
        return F.scaled_dot_product_attention(q, k, v, is_causal=mask is None, scale=scale)

    assert _set(model, sdpa) == 2
    torch.testing.assert_close(model(tokens), reference, rtol=1e-5, atol=1e-5)
    assert widths == [(24, 24, 24)] * 2  # q/k 8 + 16, v 20 padded to 24
