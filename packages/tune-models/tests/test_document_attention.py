"""Per-document causal attention equals SDPA under the dense block-causal mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tune.models import build_attention_mask
from tune.models.document_attention import DocumentLayout, document_attend, document_layout


def _ids(rows: list[list[int]]) -> torch.Tensor:
    """[B, T] document ids from per-row document lengths."""
    return torch.stack(
        [torch.cat([torch.full((n,), i) for i, n in enumerate(row)]) for row in rows]
    )


def _assert_equals_dense_mask(
    ids: torch.Tensor, layout: DocumentLayout, heads: int, kv_heads: int, seed: int
) -> None:
    """document_attend over ``layout`` equals masked SDPA in values and q/k/v gradients."""
    g = torch.Generator().manual_seed(seed)
    (B, T), D = ids.shape, 8
    q, k, v = (torch.randn(B, h, T, D, generator=g) for h in (heads, kv_heads, kv_heads))
    dense = build_attention_mask(q_len=T, kv_len=T, document_ids=ids)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=dense, scale=0.3, enable_gqa=True)
    got_in = [t.clone().requires_grad_() for t in (q, k, v)]
    got = document_attend(*got_in, layout, scale=0.3)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(B, heads, T, D, generator=g)
    (ref * upstream).sum().backward()
    (got * upstream).sum().backward()
    for name, a, b in zip("qkv", got_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_document_attention_equals_dense_mask_in_values_and_grads() -> None:
    ids = _ids([[5, 1, 9, 5], [6, 6, 4, 4]])  # the last run of row 0 stands for packing padding
    layout = document_layout(ids)
    assert layout is not None
    assert (layout.num_docs, layout.max_len) == (8, 9)
    _assert_equals_dense_mask(ids, layout, heads=4, kv_heads=2, seed=3)


def test_layout_falls_back_to_the_dense_mask() -> None:
    # An id that comes back later in its row joins both runs under the dense mask.
    assert document_layout(torch.tensor([[0, 0, 1, 1, 0, 0]])) is None
    # One long document among short ones: 5 documents padded to 16 cost more than 1 * 20².
    assert document_layout(_ids([[16, 1, 1, 1, 1]])) is None
    assert document_layout(_ids([[4, 4, 4, 4, 4]])) is not None


def test_documents_are_grouped_by_length_and_still_equal_the_dense_mask() -> None:
    ids = _ids([[90, 10], [10] * 10, [30, 30, 30, 10]])
    layout = document_layout(ids)
    assert layout is not None
    # One 90-token document alone, the 30s together, the eleven 10s together.
    assert sorted((grp.num_docs, grp.max_len) for grp in layout.groups) == [
        (1, 90),
        (3, 30),
        (12, 10),
    ]
    assert (layout.num_docs, layout.max_len) == (16, 90)
    _assert_equals_dense_mask(ids, layout, heads=4, kv_heads=2, seed=5)
