"""Packing: hand-computed selections, per-document positions, loss parity, no cross-document attention."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.data import (
    IGNORE_INDEX,
    collate_packed,
    collate_padded,
    concat_documents,
    pack_stream,
    remove_padding,
    select_for_pack,
    shift_labels,
)


class TinyLM(nn.Module):
    """Two pre-norm attention blocks with learned position embeddings indexed by `positions`."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, max_pos: int = 256) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_pos, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "o": nn.Linear(dim, dim),
                           "mlp": nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))})
            for _ in range(2)
        )  # fmt: skip
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens, positions, document_ids=None, attention_mask=None):
        b, t = tokens.shape
        x = self.tok(tokens) + self.pos(positions)  # (B, T, D)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        mask = causal.expand(b, t, t)
        if document_ids is not None:  # block-causal: only earlier tokens of the same document
            mask = mask & (document_ids[:, :, None] == document_ids[:, None, :])
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, :]
        for block in self.blocks:
            q, k, v = (
                block["qkv"](block["norm"](x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            )
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])  # (B, H, T, hd)
            x = x + block["o"](attn.transpose(1, 2).reshape(b, t, -1))
            x = x + block["mlp"](x)
        return self.head(x)


def _samples(n: int, seed: int, max_len: int = 40) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randrange(3, max_len)
        tokens = [rng.randrange(1, 64) for _ in range(length)]
        trained = [i >= length // 3 for i in range(length)]  # a masked "prompt" then trained tokens
        out.append({"tokens": tokens, "labels": shift_labels(tokens, trained)})
    return out


def test_select_for_pack_hand_computed() -> None:
    assert select_for_pack([5, 9, 3, 4, 2], 12, "best_fit") == [1, 2]  # 9, then 3 fills the rest
    assert select_for_pack([5, 6, 3, 4, 2], 12, "best_fit") == [1, 0]  # 6 + 5 = 11, then 1 left
    assert select_for_pack([5, 6, 3, 4, 2], 12, "greedy") == [0, 1]  # 5 + 6, 3 does not fit
    assert select_for_pack([4, 4, 4], 12, "best_fit") == [0, 1, 2]


def test_positions_restart_and_document_ids() -> None:
    pack = concat_documents(
        [{"tokens": [1, 2, 3], "labels": [2, 3, -100]}, {"tokens": [4, 5], "labels": [5, -100]}]
    )
    assert pack["positions"] == [0, 1, 2, 0, 1]
    assert pack["document_ids"] == [0, 0, 0, 1, 1]
    batch = collate_packed([pack], max_seq_len=8, pad_id=0)
    assert batch["tokens"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, -100, 5, -100, -100, -100, -100]]
    assert batch["positions"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert batch["padding_mask"].tolist() == [[False] * 5 + [True] * 3]
    full = collate_packed(
        [pack, concat_documents([{"tokens": [1] * 8, "labels": [-100] * 8}])], 8, 0
    )
    assert (~full["padding_mask"]).sum(1).tolist() == [5, 8]  # a full row has no padding


def test_pack_stream_keeps_every_sample_once() -> None:
    samples = _samples(200, seed=1)
    packs = list(pack_stream(samples, max_seq_len=64, buffer_size=16))
    docs = []
    for pack in packs:
        assert len(pack["tokens"]) <= 64
        ids = pack["document_ids"]
        for d in sorted(set(ids)):
            docs.append(tuple(tok for tok, i in zip(pack["tokens"], ids, strict=True) if i == d))
    assert sorted(docs) == sorted(tuple(s["tokens"]) for s in samples)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_packed_and_unpacked_give_the_same_per_token_loss(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    model = TinyLM().to(dtype).eval()
    samples = _samples(24, seed=2)
    packs = list(pack_stream(samples, max_seq_len=96, buffer_size=8))
    packed = collate_packed(packs, 96, pad_id=0)
    with torch.no_grad():
        logits = model(packed["tokens"], packed["positions"], document_ids=packed["document_ids"])
        packed_loss = F.cross_entropy(
            logits.flatten(0, 1), packed["labels"].flatten(), reduction="none"
        ).view(packed["labels"].shape)
        padded = collate_padded(samples, pad_id=0)
        logits = model(
            padded["tokens"], padded["positions"], attention_mask=padded["attention_mask"]
        )
        padded_loss = F.cross_entropy(
            logits.flatten(0, 1), padded["labels"].flatten(), reduction="none"
        ).view(padded["labels"].shape)
    # Map each document's token sequence to its per-token losses in both layouts.
    by_doc_packed = {}
    for row in range(len(packs)):
        ids = packed["document_ids"][row]
        for d in range(len(packs[row]["tokens"]) and int(packs[row]["document_ids"][-1]) + 1):
            sel = ids == d
            by_doc_packed[tuple(packed["tokens"][row][sel].tolist())] = (
                packed_loss[row][sel],
                packed["labels"][row][sel],
            )
    assert len(by_doc_packed) == len(samples)
    worst = 0.0
    for i, sample in enumerate(samples):
        n = len(sample["tokens"])
        loss, labels = by_doc_packed[tuple(sample["tokens"])]
        assert labels.tolist() == padded["labels"][i, :n].tolist()
        trained = labels != IGNORE_INDEX
        worst = max(worst, (loss[trained] - padded_loss[i, :n][trained]).abs().max().item())
    print(f"packed vs unpacked max per-token loss difference ({dtype}): {worst:.2e}")
    assert worst < tol, worst


def test_no_token_attends_across_documents() -> None:
    torch.manual_seed(0)
    model = TinyLM().eval()
    samples = _samples(6, seed=3, max_len=20)
    pack = concat_documents(samples)
    batch = collate_packed([pack], max_seq_len=128, pad_id=0)
    changed = batch["tokens"].clone()
    first = batch["document_ids"][0] == 2
    changed[0, first] = (changed[0, first] + 7) % 64  # rewrite document 2 only
    with torch.no_grad():
        a = model(batch["tokens"], batch["positions"], document_ids=batch["document_ids"])
        b = model(changed, batch["positions"], document_ids=batch["document_ids"])
    others = ~first
    assert torch.equal(a[0, others], b[0, others])  # bit-identical outside document 2
    assert not torch.allclose(a[0, first], b[0, first])


def test_remove_padding_hand_computed() -> None:
    batch = collate_padded(
        [{"tokens": [5, 6, 7], "labels": [6, 7, -100]}, {"tokens": [8, 9], "labels": [9, 2]}],
        pad_id=0,
        pad_to_multiple_of=4,
    )
    flat = remove_padding(batch)
    assert sorted(flat) == ["document_ids", "labels", "positions", "tokens"]
    assert flat["tokens"].tolist() == [[5, 6, 7, 8, 9]]
    assert flat["labels"].tolist() == [[6, 7, -100, 9, 2]]  # no label crosses into example 2
    assert flat["positions"].tolist() == [[0, 1, 2, 0, 1]]
    assert flat["document_ids"].tolist() == [[0, 0, 0, 1, 1]]


def test_remove_padding_counts_positions_of_left_padded_rows() -> None:
    batch = {
        "tokens": torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
    }
    flat = remove_padding(batch)
    assert flat["tokens"].tolist() == [[3, 4, 5, 6, 7, 8]]
    assert flat["positions"].tolist() == [[0, 1, 0, 1, 2, 3]]
    assert flat["document_ids"].tolist() == [[0, 0, 1, 1, 1, 1]]


def test_remove_padding_names_the_bad_key() -> None:
    batch = collate_padded(_samples(3, seed=5), pad_id=0)
    with pytest.raises(ValueError, match="no 'attention_mask'"):
        remove_padding({k: v for k, v in batch.items() if k != "attention_mask"})
    with pytest.raises(ValueError, match="already packed"):
        remove_padding({**batch, "document_ids": batch["positions"]})
    with pytest.raises(ValueError, match=r"'labels' has shape \(3, 1\)"):
        remove_padding({**batch, "labels": batch["labels"][:, :1]})


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_padding_free_gives_the_padded_batch_loss(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    model = TinyLM().to(dtype).eval()
    padded = collate_padded(_samples(8, seed=4), pad_id=0)
    flat = remove_padding(padded)
    real = padded["attention_mask"].bool()
    assert flat["tokens"].shape[1] == int(real.sum()) < padded["tokens"].numel()
    with torch.no_grad():
        logits = model(
            padded["tokens"], padded["positions"], attention_mask=padded["attention_mask"]
        )
        flat_logits = model(flat["tokens"], flat["positions"], document_ids=flat["document_ids"])
    worst = (logits[real] - flat_logits[0]).abs().max().item()
    print(f"padding-free vs padded max logit difference ({dtype}): {worst:.2e}")
    assert worst < tol, worst
    summed = [
        F.cross_entropy(out.flatten(0, -2), labels.flatten(), reduction="sum")
        for out, labels in ((logits, padded["labels"]), (flat_logits, flat["labels"]))
    ]
    torch.testing.assert_close(summed[0], summed[1], rtol=tol, atol=0)


def test_best_fit_fills_at_least_95_percent_on_a_realistic_length_distribution() -> None:
    # Lengths of chat SFT data are roughly log-normal (median ~ 300 tokens, long tail to 4k).
    rng = random.Random(0)
    max_seq_len = 4096
    lengths = [
        min(max_seq_len, max(8, int(math.exp(rng.gauss(math.log(300), 0.9))))) for _ in range(6000)
    ]
    samples = [{"tokens": [1] * n, "labels": [1] * n} for n in lengths]
    packs = list(pack_stream(samples, max_seq_len, "best_fit", buffer_size=64))
    fill = sum(lengths) / (len(packs) * max_seq_len)
    greedy = list(pack_stream(samples, max_seq_len, "greedy", buffer_size=64))
    greedy_fill = sum(lengths) / (len(greedy) * max_seq_len)
    print(
        f"packing fill: best_fit {fill:.4f}, greedy {greedy_fill:.4f} ({len(packs)} vs {len(greedy)} rows)"
    )
    assert fill >= 0.95
    assert fill > greedy_fill
