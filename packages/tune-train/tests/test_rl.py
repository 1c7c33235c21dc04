"""tune.train.rl: rewards and their scoring, the generation backend over a passed-in generate
function, sample-and-score errors, rollout metrics over ranks and held-out accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from tune.train.rl import (
    GenerationBackend,
    PolicyGenerationBackend,
    RewardInputs,
    RolloutBatch,
    SamplingSettings,
    ScoredRollouts,
    answer_format,
    cut_at_stop,
    exact_answer,
    final_integer,
    held_out_accuracy,
    length_penalty,
    prompt_rows,
    rollout_metrics,
    sample_and_score,
    score_completions,
    weighted_reward,
)


def _inputs(completions: list[str], answers: list[str], lengths: list[int]) -> RewardInputs:
    return RewardInputs([""] * len(completions), completions, answers, lengths)


def test_bundled_rewards() -> None:
    inputs = _inputs(
        ["Answer: 12", "Answer: 12 apples", "I think -3", "12", "no number"],
        ["12", "12", "-3", "13", "1"],
        [3, 5, 4, 1, 10],
    )
    assert exact_answer(inputs) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert answer_format(inputs) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert answer_format(inputs, pattern=r"-?\d+") == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert length_penalty(inputs, free_tokens=3, per_token=0.5) == [0.0, -1.0, -0.5, 0.0, -3.5]
    assert final_integer("from 3 to -14.") == -14
    assert final_integer("none") is None


def test_reward_inputs_must_have_one_length() -> None:
    with pytest.raises(ValueError, match="completions 2, answers 1"):
        RewardInputs(["p", "p"], ["a", "b"], ["1"], [1, 1])


def test_scoring_weights_binds_options_and_names_each_function() -> None:
    inputs = _inputs(["Answer: 7", "8 is it"], ["7", "8"], [3, 4])
    rewards = [
        weighted_reward(exact_answer),
        weighted_reward(length_penalty, weight=2.0, options={"free_tokens": 3, "per_token": 0.25}),
        weighted_reward(exact_answer, weight=-1.0),  # the same name twice gets a suffix
    ]
    assert [r.name for r in rewards] == ["exact_answer", "length_penalty", "exact_answer"]
    total, each = score_completions(rewards, inputs)
    assert each["exact_answer"].tolist() == [1.0, 1.0]
    assert each["length_penalty"].tolist() == [0.0, -0.25]
    assert each["exact_answer_2"].tolist() == [1.0, 1.0]
    assert total.tolist() == [0.0, -0.5]
    assert total.dtype == torch.float32


def test_bad_rewards_are_named() -> None:
    inputs = _inputs(["c"], ["1"], [4])
    nan = weighted_reward(length_penalty, options={"per_token": float("nan")})
    with pytest.raises(ValueError, match=r"length_penalty.*completion 0 \('c'\).*finite"):
        score_completions([nan], inputs)
    short = weighted_reward(lambda _: [], name="empty")
    with pytest.raises(ValueError, match="'empty' returned 0 values for 1 completions"):
        score_completions([short], inputs)
    with pytest.raises(TypeError, match="'mine' is 3, which is not callable"):
        weighted_reward(3, name="mine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight must be finite"):
        weighted_reward(exact_answer, weight=math.inf)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 4, "temperature": -0.5}, "temperature"),
        ({"max_new_tokens": 4, "top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 4, "top_k": 0}, "top_k"),
    ],
)
def test_sampling_settings_name_the_bad_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"SamplingSettings\.{field} must be"):
        SamplingSettings(**kwargs)


class RecordingGenerate:
    """A ``GenerateFunction`` sampling random ids from the generator (recording each call)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, model, prompts, *, max_new_tokens, generator, **kwargs) -> list[list[int]]:
        self.calls.append({"rows": len(prompts), "grad": torch.is_grad_enabled(), **kwargs})
        ids = torch.randint(0, 4, (len(prompts), max_new_tokens), generator=generator)
        return ids.tolist()


def test_policy_backend_batches_seeds_and_cuts_at_stop() -> None:
    generate = RecordingGenerate()
    backend = PolicyGenerationBackend(nn.Linear(2, 2), generate, pad_id=9, batch_size=2)
    assert isinstance(backend, GenerationBackend)
    sampling = SamplingSettings(6, temperature=0.7, top_k=3, stop_tokens=(3,))
    first = backend.generate([[1]] * 5, sampling, seed=11)
    assert [c["rows"] for c in generate.calls] == [2, 2, 1]
    assert not any(c["grad"] for c in generate.calls)  # decoded under no_grad
    assert {
        (c["pad_id"], c["stop_tokens"], c["temperature"], c["top_k"]) for c in generate.calls
    } == {(9, (3,), 0.7, 3)}
    assert backend.generate([[1]] * 5, sampling, seed=11) == first  # same seed, same rows
    assert backend.generate([[1]] * 5, sampling, seed=12) != first
    # each row ends at its first stop token, or is full length (and some rows did stop early)
    assert all(3 not in row[:-1] for row in first)
    assert all(row[-1] == 3 or len(row) == 6 for row in first)
    assert min(len(row) for row in first) < 6
    other = nn.Linear(2, 2)
    backend.sync_weights(other)
    assert backend.model is other


def test_lockstep_decodes_every_step_then_cuts() -> None:
    generate = RecordingGenerate()
    backend = PolicyGenerationBackend(nn.Linear(2, 2), generate, lockstep=True)
    rows = backend.generate([[1], [2]], SamplingSettings(8, stop_tokens=(3,)), seed=0)
    assert generate.calls[0]["stop_tokens"] == ()  # no early stop: every rank runs 8 steps
    assert all(3 not in row[:-1] for row in rows)
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        PolicyGenerationBackend(nn.Linear(2, 2), generate, batch_size=0)


def test_cut_at_stop() -> None:
    assert cut_at_stop([5, 3, 7, 3], [3]) == [5, 3]
    assert cut_at_stop([5, 7], [3]) == [5, 7]
    assert cut_at_stop([], [3]) == []


def test_prompt_rows_drop_left_padding() -> None:
    batch = {
        "tokens": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
    }
    assert prompt_rows(batch) == [[5, 6], [7, 8, 9, 1]]
    with pytest.raises(KeyError, match="attention_mask"):
        prompt_rows({"tokens": batch["tokens"]})


class DigitTokenizer:
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(str(i) for i in ids)


class FixedBackend:
    def __init__(self, completions: list[list[int]]) -> None:
        self.completions = completions
        self.seeds: list[int] = []

    def generate(self, prompts, sampling: SamplingSettings, seed: int) -> list[list[int]]:
        self.seeds.append(seed)
        return self.completions[: len(prompts)]

    def sync_weights(self, model: nn.Module) -> None:
        pass


def test_sample_and_score_checks_its_inputs() -> None:
    settings = {"sampling": SamplingSettings(2), "seed": 0, "scale_rewards": True, "pad_id": 0}
    rewards = [weighted_reward(exact_answer)]
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        sample_and_score(FixedBackend([[1]] * 4), DigitTokenizer(), [[1], [2]], ["1"],
                         group_size=2, rewards=rewards, **settings)  # fmt: skip
    with pytest.raises(ValueError, match=r"FixedBackend.generate returned 3 completions for 4"):
        sample_and_score(FixedBackend([[1]] * 3), DigitTokenizer(), [[1], [2]], ["1", "2"],
                         group_size=2, rewards=rewards, **settings)  # fmt: skip


def _scored(total: list[float], exact: list[float], lengths: list[float]) -> ScoredRollouts:
    n = len(total)
    batch = RolloutBatch(torch.zeros(n, 2, dtype=torch.long), torch.zeros(n, 2, dtype=torch.long),
                         torch.zeros(n))  # fmt: skip
    return ScoredRollouts(batch, torch.tensor(total), {"exact": torch.tensor(exact)},
                          torch.tensor(lengths), [""] * n)  # fmt: skip


def test_rollout_metrics_by_hand() -> None:
    scored = _scored([1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 0.0, 1.0], [3.0, 5.0, 2.0, 6.0])
    m = rollout_metrics(scored, group_size=2, reduce=None)
    assert m["reward/mean"] == pytest.approx(1.0)
    assert m["reward/std"] == pytest.approx(math.sqrt(0.5))  # population std
    assert m["reward/exact/mean"] == pytest.approx(0.75)
    assert m["reward/exact/std"] == pytest.approx(math.sqrt(0.75 * 0.25))
    assert m["completion_length"] == pytest.approx(4.0)
    assert m["flat_group_fraction"] == pytest.approx(0.5)  # group 1 scored 1, 1: no signal


def test_rollout_metrics_over_two_ranks_equal_the_pooled_batch() -> None:
    a = _scored([1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 0.0, 1.0], [3.0, 5.0, 2.0, 6.0])
    b = _scored([4.0, 0.0], [1.0, 0.0], [8.0, 1.0])
    sent: list[torch.Tensor] = []  # rank b's contributions, in call order

    def record(t: torch.Tensor) -> torch.Tensor:
        sent.append(t.clone())
        return t

    rollout_metrics(b, 2, record)
    received = iter(sent)
    over_ranks = rollout_metrics(a, 2, lambda t: t + next(received))  # an all-reduce sum
    pooled = _scored([1.0, 1.0, 0.0, 2.0, 4.0, 0.0], [1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
                     [3.0, 5.0, 2.0, 6.0, 8.0, 1.0])  # fmt: skip
    assert over_ranks == pytest.approx(rollout_metrics(pooled, 2, None))
    assert over_ranks["flat_group_fraction"] == pytest.approx(1 / 3)


def test_held_out_accuracy_chunks_seeds_and_reduces() -> None:
    backend = FixedBackend([[7], [8], [9], [7], [8]])
    answers = ["7", "0", "9", "7", "7"]
    acc = held_out_accuracy(backend, DigitTokenizer(), [[1]] * 5, answers,
                            sampling=SamplingSettings(1, temperature=0.0), batch_size=3,
                            reduce=None, seed=100)  # fmt: skip
    # batches [7, 8, 9] vs [7, 0, 9] and [7, 8] vs [7, 7]: 3 of 5 right
    assert acc == pytest.approx(3 / 5)
    assert backend.seeds == [100, 103]
    other_rank = torch.tensor([5.0, 5.0], dtype=torch.float64)  # all 5 right there
    acc = held_out_accuracy(backend, DigitTokenizer(), [[1]] * 5, answers,
                            sampling=SamplingSettings(1), batch_size=5,
                            reduce=lambda t: t + other_rank)  # fmt: skip
    assert acc == pytest.approx(8 / 10)
    never = held_out_accuracy(backend, DigitTokenizer(), [[1]] * 3, answers[:3],
                              sampling=SamplingSettings(1), batch_size=3, reduce=None,
                              correct=lambda inputs: [0.0] * len(inputs.completions))  # fmt: skip
    assert never == 0.0


def test_update_metrics_average_updates_and_ranks() -> None:
    from tune.train.rl import update_metrics

    updates = [
        {"loss": 1.0, "grad_norm": 2.0, "lr": 0.1, "clip_fraction": 0.2, "kl": 0.0},
        {"loss": 3.0, "grad_norm": 4.0, "lr": 0.1, "clip_fraction": 0.4, "kl": 0.2},
    ]
    one = update_metrics(updates, None, 1)
    assert one["loss"] == 2.0
    assert one["grad_norm"] == 3.0
    assert one["clip_fraction"] == pytest.approx(0.3)
    assert one["kl"] == pytest.approx(0.1)
    # two ranks: the other rank's per-rank values are 0.1 and 0.3 higher than this one's
    two = update_metrics(updates, lambda t: t + t + torch.tensor([0.1, 0.3], dtype=t.dtype), 2)
    assert two["clip_fraction"] == pytest.approx(0.35)
    assert two["kl"] == pytest.approx(0.25)
    assert two["loss"] == 2.0


def test_rollout_throughput_counts_all_ranks() -> None:
    from tune.train.rl import rollout_throughput

    trained = torch.tensor([[True, True, False], [True, False, False]])
    lengths = torch.tensor([2, 1])
    one = rollout_throughput(trained, lengths, None, generation_s=0.5, training_s=2.0, updates=2)
    assert one == {"generation_tokens_per_s": 6.0, "training_tokens_per_s": 3.0}
    two = rollout_throughput(trained, lengths, lambda t: 2 * t, generation_s=0.5, training_s=2.0,
                             updates=2)  # fmt: skip
    assert two == {"generation_tokens_per_s": 12.0, "training_tokens_per_s": 6.0}
