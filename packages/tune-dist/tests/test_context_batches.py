"""``context_parallel_batch``: padding to 2 * cp chunks and each rank's zig-zag share."""

from __future__ import annotations

import pytest
import torch

import tune.dist as td


def test_shards_cover_the_padded_batch_and_positions_continue() -> None:
    tokens = torch.arange(1, 11)[None]  # T = 10, cp = 2 -> padded to 12
    labels = tokens.clone()
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    batch = {"tokens": tokens, "labels": labels, "positions": positions, "document_ids": docs}
    shards = [td.context_parallel_batch(batch, 2, r, pad_token=7) for r in range(2)]
    full = {
        k: td.zigzag_unshard([s[0][k] for s in shards]) for k in ("tokens", "labels", "positions")
    }
    assert full["tokens"].tolist() == [[*range(1, 11), 7, 7]]
    assert full["labels"].tolist() == [[*range(1, 11), -100, -100]]
    assert full["positions"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]]
    documents = shards[0][1]
    assert documents is not None
    assert documents.tolist() == [[0] * 4 + [1] * 6 + [2] * 2]
    assert shards[0][0]["tokens"].tolist() == [[1, 2, 3, 10, 7, 7]]  # chunks 0 and 3
    assert "document_ids" not in shards[0][0]


def test_right_padding_is_dropped_and_left_padding_refused() -> None:
    tokens = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    batch = {"tokens": tokens, "labels": tokens, "attention_mask": mask}
    local, documents = td.context_parallel_batch(batch, 2, 1)
    assert documents is None
    assert "attention_mask" not in local
    assert local["positions"].tolist() == [[1, 2], [1, 2]]
    with pytest.raises(ValueError, match="right padding"):
        td.context_parallel_batch({**batch, "attention_mask": mask.flip(1)}, 2, 0)
    with pytest.raises(KeyError, match="labels"):
        td.context_parallel_batch({"tokens": tokens}, 2, 0)
