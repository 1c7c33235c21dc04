"""DatasetMixture: shares by weight, an order independent of the world size, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from tune.data import (
    DatasetMixture,
    MixtureBuilder,
    MixtureSource,
    StreamingLoader,
    TextBuilder,
    build_sample_builder,
    merge_loader_states,
    mixture_counts,
    split_mixture,
)
from tune.data.synthetic import write_jsonl

LENGTHS = (30, 50, 20)
WEIGHTS = (1.0, 2.0, 1.0)


def _parts() -> list[datasets.Dataset]:
    return [
        datasets.Dataset.from_dict({"text": [f"{name} row {i}" for i in range(n)]})
        for name, n in zip(("alpha", "beta", "gamma"), LENGTHS, strict=True)
    ]


@pytest.fixture(scope="module")
def mixture() -> DatasetMixture:
    return DatasetMixture(_parts(), WEIGHTS, seed=3, names=["alpha", "beta", "gamma"])


@pytest.fixture(scope="module")
def identity(mixture, chatml_tokenizer):
    """token tuple -> (source, row) of every row of every source."""
    builder = TextBuilder(chatml_tokenizer)
    return {
        tuple(builder(part[row], row)["tokens"]): (source, row)
        for source, part in enumerate(mixture.parts)
        for row in range(len(part))
    }


def test_counts_follow_the_weights_and_add_up() -> None:
    assert mixture_counts([30, 50, 20], [1, 2, 1]) == [25, 50, 25]
    assert mixture_counts([10, 10, 10], [1, 1, 1], num_rows=10) == [4, 3, 3]  # remainder: first
    assert mixture_counts([7, 3], None) == [7, 3]  # every row once
    assert mixture_counts([7, 3], None, num_rows=20) == [14, 6]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"weight 1 must be a positive number"):
            mixture_counts([5, 5], [1.0, bad])


def test_every_prefix_of_the_mixture_holds_each_source_at_its_share(mixture) -> None:
    assert len(mixture) == 100
    assert mixture.counts == [25, 50, 25]
    seen = Counter()
    worst = 0.0
    for position in range(len(mixture)):
        source, _ = mixture.locate(position)
        seen[source] += 1
        for s, weight in enumerate(WEIGHTS):
            worst = max(worst, abs(seen[s] - (position + 1) * weight / sum(WEIGHTS)))
    assert worst <= 0.5, worst  # at most half a row from the exact share
    # gamma (20 rows, 25 taken) repeats 5 rows; alpha (30 rows, 25 taken) leaves 5 out
    per_row = Counter(mixture.locate(p) for p in range(len(mixture)))
    assert sorted(Counter(c for (s, _), c in per_row.items() if s == 2).items()) == [
        (1, 15),
        (2, 5),
    ]
    assert sum(1 for s, _ in per_row if s == 0) == 25
    assert mixture[0] == mixture.parts[mixture.locate(0)[0]][mixture.locate(0)[1]]


def test_the_order_is_a_function_of_seed_weights_and_lengths(mixture) -> None:
    again = DatasetMixture(_parts(), WEIGHTS, seed=3)
    assert [again.locate(p) for p in range(100)] == [mixture.locate(p) for p in range(100)]
    other = DatasetMixture(_parts(), WEIGHTS, seed=4)
    assert [other.locate(p) for p in range(100)] != [mixture.locate(p) for p in range(100)]


def _loader(mixture, tok, rank, world, **kw):
    builder = MixtureBuilder(mixture, [TextBuilder(tok) for _ in mixture.parts])
    return StreamingLoader(
        mixture, builder, batch_size=1, max_seq_len=64, rank=rank, world_size=world, seed=11,
        epochs=2, drop_last=False, **kw,
    )  # fmt: skip


def _global_order(loaders, identity, steps=None):
    """The rows of every rank, interleaved rank by rank: the global order of positions."""
    iters, order, step = [iter(loader) for loader in loaders], [], 0
    while steps is None or step < steps:
        batches = [next(it, None) for it in iters]
        if all(b is None for b in batches):
            break
        for batch in batches:
            if batch is not None:
                tokens = batch["tokens"][0][batch["attention_mask"][0].bool()]
                order.append(identity[tuple(tokens.tolist())])
        step += 1
    return order


def test_the_mixed_stream_is_the_same_at_world_sizes_1_2_and_4(
    mixture, chatml_tokenizer, identity
) -> None:
    orders = {
        world: _global_order(
            [_loader(mixture, chatml_tokenizer, r, world) for r in range(world)], identity
        )
        for world in (1, 2, 4)
    }
    assert len(orders[1]) == 200  # two epochs of the 100-row mixture
    assert orders[1] == orders[2] == orders[4]
    assert Counter(source for source, _ in orders[1]) == {0: 50, 1: 100, 2: 50}


def test_a_state_saved_at_world_size_2_resumes_at_world_size_1(
    mixture, chatml_tokenizer, identity
) -> None:
    reference = _global_order([_loader(mixture, chatml_tokenizer, 0, 1)], identity)
    two = [_loader(mixture, chatml_tokenizer, r, 2) for r in range(2)]
    before = _global_order(two, identity, steps=7)
    assert before == reference[:14]
    states = [json.loads(json.dumps(loader.state_dict())) for loader in two]
    for state in (states[0], merge_loader_states(states)):  # lock-step rank state, or merged
        one = _loader(mixture, chatml_tokenizer, 0, 1)
        one.load_state_dict(state)
        assert _global_order([one], identity) == reference[14:]
    other_mix = DatasetMixture(_parts(), (1.0, 1.0, 2.0), seed=3)
    with pytest.raises(ValueError, match=r"mixture of \[25, 50, 25\] rows per source"):
        _loader(other_mix, chatml_tokenizer, 0, 1).load_state_dict(states[0])


def test_split_mixture_holds_out_each_source_and_names_a_bad_row(
    chatml_tokenizer, tmp_path: Path
) -> None:
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(40)]
    a = write_jsonl(rows, tmp_path / "a.jsonl")
    chats = [
        {"conversations": [{"from": "human", "value": f"u{i}"}, {"from": "gpt", "value": f"g{i}"}]}
        for i in range(20)
    ]
    b = write_jsonl(chats, tmp_path / "b.jsonl")

    def builder(fmt):
        return build_sample_builder(
            chatml_tokenizer, fmt, column_map={}, chat_template=None, train_on_input=False
        )

    specs = [
        MixtureSource(str(a), builder("instruction"), weight=1.0, key="data.sources.0"),
        MixtureSource(str(b), builder("chat"), weight=3.0, key="data.sources.1"),
    ]
    split = split_mixture(specs, validation_fraction=0.25, seed=0)
    assert split.train.lengths == [30, 15]
    assert split.train.counts == [11, 34]
    assert split.validation is not None
    assert split.validation.counts == [10, 5]
    loader = StreamingLoader(split.train, split.builder, batch_size=4, max_seq_len=64)
    assert next(iter(loader))["tokens"].shape[0] == 4
    chats[6]["conversations"][1]["from"] = "bot"
    write_jsonl(chats, b)
    split = split_mixture(specs, validation_fraction=0.0, seed=0)
    with pytest.raises(ValueError) as info:  # the loader checks every source's rows
        StreamingLoader(split.train, split.builder, batch_size=4, max_seq_len=64)
    assert str(info.value).startswith(f"data.sources.1: {b}:7: example 6: turn 1 has 'from'='bot'")
