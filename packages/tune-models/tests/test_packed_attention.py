"""Packed rows (document_ids, positions restarting per document) equal each document alone."""

from __future__ import annotations

import torch

from tune.models import build_attention_mask


def test_packed_row_equals_documents_run_separately(hf_and_native, family: str) -> None:
    _, model = hf_and_native(family)
    g = torch.Generator().manual_seed(21)
    lengths = [7, 3, 9]  # longer than every tiny sliding window
    docs = [torch.randint(3, 256, (1, n), generator=g) for n in lengths]
    tokens = torch.cat(docs, dim=1)
    document_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    positions = torch.cat([torch.arange(n)[None] for n in lengths], dim=1)
    with torch.no_grad():
        packed = model(tokens, positions=positions, document_ids=document_ids)
        separate = torch.cat([model(d) for d in docs], dim=1)
        unmasked = model(tokens, positions=positions)
    err = (packed - separate).abs().max().item()
    assert err < 1e-5, f"{family}: packed vs per-document max diff {err:.2e}"
    # Without the document mask later documents see earlier ones: the mask is what matters.
    assert (unmasked - separate).abs().max().item() > 1e-3


def test_mask_combines_causal_window_documents_and_padding() -> None:
    mask = build_attention_mask(
        q_len=5,
        kv_len=5,
        attention_mask=torch.tensor([[0, 1, 1, 1, 1]]),
        document_ids=torch.tensor([[0, 0, 0, 1, 1]]),
        sliding_window=2,
    )
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # padding query: only itself (never an empty row)
            [0, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],  # new document
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0, 0], expected)
