"""StreamingLoader: lazy, rank-sharded, deterministic, and exact resume at any world size."""

from __future__ import annotations

import json
import random
from collections import Counter

import datasets
import pytest
import torch

from tune.data import StreamingLoader, TextBuilder, merge_loader_states

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "silver",
    "rocket",
    "forest",
    "candle",
    "puzzle",
    "mirror",
]


@pytest.fixture(scope="module")
def corpus() -> datasets.Dataset:
    rng = random.Random(0)
    texts = [f"doc {i}: " + " ".join(rng.choices(WORDS, k=rng.randrange(2, 30))) for i in range(97)]
    return datasets.Dataset.from_dict({"text": texts})


@pytest.fixture(scope="module")
def doc_of(corpus, chatml_tokenizer):
    """token tuple -> row index (every row's tokens are unique: they start with its number)."""
    builder = TextBuilder(chatml_tokenizer)
    return {tuple(builder(row, i)["tokens"]): i for i, row in enumerate(corpus)}


def _loader(corpus, tok, rank, world, packing=None, **kw):
    kw.setdefault("epochs", 1)
    return StreamingLoader(
        corpus, TextBuilder(tok), batch_size=2, max_seq_len=128, packing=packing, buffer_size=8,
        rank=rank, world_size=world, seed=7, drop_last=False, **kw,
    )  # fmt: skip


def _docs(batch, doc_of) -> list[int]:
    """Row indices in a batch, split by document_ids (packed) or attention_mask (padded)."""
    out = []
    for row in range(batch["tokens"].shape[0]):
        tokens = batch["tokens"][row]
        if "document_ids" in batch:
            ids = batch["document_ids"][row]
            for d in torch.unique(ids).tolist():
                key = tuple(tokens[ids == d].tolist())
                if key in doc_of:  # the trailing padding is a document of its own
                    out.append(doc_of[key])
        else:
            out.append(doc_of[tuple(tokens[batch["attention_mask"][row].bool()].tolist())])
    return out


def _drain(loaders, doc_of, steps=None):
    """Round-robin over ranks, one batch each per step; returns the row indices and batches."""
    iters = [iter(loader) for loader in loaders]
    docs, batches = [], [[] for _ in loaders]
    step = 0
    while steps is None or step < steps:
        progressed = False
        for r, it in enumerate(iters):
            batch = next(it, None)
            if batch is not None:
                progressed = True
                batches[r].append(batch)
                docs.extend(_docs(batch, doc_of))
        if not progressed:
            break
        step += 1
    return docs, batches


def test_ranks_share_the_data_and_every_epoch_covers_every_row(
    corpus, chatml_tokenizer, doc_of
) -> None:
    loaders = [_loader(corpus, chatml_tokenizer, r, 3, epochs=2) for r in range(3)]
    docs, _ = _drain(loaders, doc_of)
    assert Counter(docs) == Counter({i: 2 for i in range(len(corpus))})
    first = _drain([_loader(corpus, chatml_tokenizer, 0, 1)], doc_of)[0]
    again = _drain([_loader(corpus, chatml_tokenizer, 0, 1)], doc_of)[0]
    assert first == again
    assert first != list(range(len(corpus)))
    other_seed = StreamingLoader(
        corpus,
        TextBuilder(chatml_tokenizer),
        batch_size=2,
        max_seq_len=128,
        seed=8,
        drop_last=False,
    )
    assert _drain([other_seed], doc_of)[0] != first


@pytest.mark.parametrize("packing", ["best_fit", "greedy"])
def test_packed_padding_mask_leaves_exactly_the_rows_tokens(
    corpus, chatml_tokenizer, doc_of, packing
) -> None:
    _, (batches,) = _drain([_loader(corpus, chatml_tokenizer, 0, 1, packing=packing)], doc_of)
    real = sum(int((~b["padding_mask"]).sum()) for b in batches)
    assert real == sum(len(tokens) for tokens in doc_of)  # every row once, no padding
    assert real < sum(b["tokens"].numel() for b in batches)  # the packs do have padding
    for b in batches:  # the padding is the tail: the last document of a row that is not full
        last = b["document_ids"] == b["document_ids"].amax(1, keepdim=True)
        assert not (b["padding_mask"] & ~last).any()


@pytest.mark.parametrize("packing", [None, "best_fit", "greedy"])
def test_resume_at_the_same_world_size_is_bit_identical(
    corpus, chatml_tokenizer, doc_of, packing
) -> None:
    world, k = 2, 3
    _, reference = _drain(
        [_loader(corpus, chatml_tokenizer, r, world, packing) for r in range(world)], doc_of
    )
    first = [_loader(corpus, chatml_tokenizer, r, world, packing) for r in range(world)]
    _drain(first, doc_of, steps=k)
    states = [json.loads(json.dumps(loader.state_dict())) for loader in first]  # plain data
    resumed = [_loader(corpus, chatml_tokenizer, r, world, packing) for r in range(world)]
    for loader, state in zip(resumed, states, strict=True):
        loader.load_state_dict(state)
    _, rest = _drain(resumed, doc_of)
    for r in range(world):
        assert len(reference[r]) == k + len(rest[r])
        for expected, got in zip(reference[r][k:], rest[r], strict=True):
            assert expected.keys() == got.keys()
            assert all(torch.equal(expected[key], got[key]) for key in expected)
    if packing:  # the packing buffer was non-empty when saved, and it was restored
        assert any(s["cursor"]["pending"] for s in states)


@pytest.mark.parametrize(
    ("packing", "old_world", "new_world"),
    [(None, 2, 3), ("best_fit", 2, 3), ("best_fit", 3, 1), ("greedy", 1, 4)],
)
def test_resume_at_a_different_world_size_has_no_repeats_and_no_gaps(
    corpus, chatml_tokenizer, doc_of, packing, old_world, new_world
) -> None:
    before_loaders = [
        _loader(corpus, chatml_tokenizer, r, old_world, packing, epochs=2) for r in range(old_world)
    ]
    before, _ = _drain(before_loaders, doc_of, steps=4)
    merged = merge_loader_states([loader.state_dict() for loader in before_loaders])
    after_loaders = [
        _loader(corpus, chatml_tokenizer, r, new_world, packing, epochs=2) for r in range(new_world)
    ]
    for loader in after_loaders:
        loader.load_state_dict(merged)
    after, _ = _drain(after_loaders, doc_of)
    counts = Counter(before + after)
    repeats = sum(c - 2 for c in counts.values() if c > 2)
    gaps = sum(2 - counts.get(i, 0) for i in range(len(corpus)) if counts.get(i, 0) < 2)
    assert (repeats, gaps) == (0, 0)


def test_lock_step_cursor_of_one_rank_resumes_at_any_world_size(
    corpus, chatml_tokenizer, doc_of
) -> None:
    # Unpacked training consumes W * B positions per step, so one rank's cursor is the global one.
    old = [_loader(corpus, chatml_tokenizer, r, 2) for r in range(2)]
    before, _ = _drain(old, doc_of, steps=5)
    new = [_loader(corpus, chatml_tokenizer, r, 4) for r in range(4)]
    for loader in new:
        loader.load_state_dict(old[1].state_dict())
    after, _ = _drain(new, doc_of)
    assert sorted(before + after) == list(range(len(corpus)))
    reference, _ = _drain([_loader(corpus, chatml_tokenizer, 0, 1)], doc_of)
    assert set(before) == set(reference[:20])  # each step took the next contiguous block


def test_buffered_cursor_refuses_a_different_world_size_without_merging(
    corpus, chatml_tokenizer, doc_of
) -> None:
    loader = _loader(corpus, chatml_tokenizer, 0, 2, "best_fit")
    next(iter(loader))
    other = _loader(corpus, chatml_tokenizer, 0, 3, "best_fit")
    with pytest.raises(ValueError, match="merge_rank_states"):
        other.load_state_dict(loader.state_dict())


def test_loader_is_lazy(chatml_tokenizer) -> None:
    calls = []
    builder = TextBuilder(chatml_tokenizer)

    class Counting(TextBuilder):
        def __call__(self, row, index):
            calls.append(index)
            return builder(row, index)

    rows = datasets.Dataset.from_dict({"text": [f"row {i} walnut" for i in range(5000)]})
    loader = StreamingLoader(
        rows,
        Counting(chatml_tokenizer),
        batch_size=4,
        max_seq_len=64,
        packing="best_fit",
        buffer_size=16,
    )
    assert len(calls) == 5000  # validate builds (and discards) every sample once, up front
    calls.clear()
    batch = next(iter(loader))
    assert batch["tokens"].shape == (4, 64)
    assert len(calls) <= 4 * 16 + 16  # a few buffers' worth, not 5,000 rows
