"""GRPO's step on a tiny fixed batch: rewards, advantages, the clipped loss, its gradient and the
KL metric, all against values computed by hand (plain Python math)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tune.train import GradientAccumulator
from tune.train.rl import (
    GenerationBackend,
    PolicyLossSettings,
    RolloutBatch,
    SamplingSettings,
    answer_format,
    batched_logprobs,
    exact_answer,
    policy_backward,
    sample_and_score,
    weighted_reward,
    with_logprobs,
)

ANSWER, EOS, PAD = 10, 11, 12  # ids 0..9 are the digits
V = 16


class CharTokenizer:
    """Decodes ids: digits, 10 -> 'Answer: ', 11 -> EOS (special), others -> 'x'."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = {ANSWER: "Answer: ", EOS: "" if skip_special_tokens else "<eos>"}
        return "".join(str(i) if i < 10 else text.get(i, "x") for i in ids)


class FixedBackend:
    """A generation backend returning fixed completions (and recording what it was asked)."""

    def __init__(self, completions: list[list[int]]) -> None:
        self.completions = completions
        self.calls: list[tuple[list[list[int]], int]] = []

    def generate(self, prompts, sampling: SamplingSettings, seed: int) -> list[list[int]]:
        self.calls.append(([list(p) for p in prompts], seed))
        return [list(c) for c in self.completions]

    def sync_weights(self, model: nn.Module) -> None:
        pass


class TableModel(nn.Module):
    """Logits [N, T, V] are a parameter; calls take consecutive row slices (micro-batches)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.next_row = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = slice(self.next_row, self.next_row + tokens.shape[0])
        assert tokens.shape[1] == self.logits.shape[1]
        self.next_row = rows.stop % self.logits.shape[0]
        return self.logits[rows]


PROMPTS = [[13, 14], [15]]
ANSWERS = ["3", "5"]
# group 1: correct + formatted, wrong + formatted; group 2: correct unformatted, correct formatted
COMPLETIONS = [[ANSWER, 3, EOS], [ANSWER, 4, EOS], [5], [ANSWER, 5, EOS]]


def _scored():
    backend = FixedBackend(COMPLETIONS)
    assert isinstance(backend, GenerationBackend)
    rewards = [weighted_reward(exact_answer), weighted_reward(answer_format, weight=0.5)]
    scored = sample_and_score(
        backend, CharTokenizer(), PROMPTS, ANSWERS, group_size=2,
        sampling=SamplingSettings(4, stop_tokens=(EOS,)), seed=7, rewards=rewards,
        scale_rewards=True, pad_id=PAD,
    )  # fmt: skip
    return backend, scored


def test_rewards_advantages_and_layout_match_hand_values() -> None:
    backend, scored = _scored()
    # each prompt is repeated G=2 times, in order, with the given seed
    assert backend.calls == [([[13, 14], [13, 14], [15], [15]], 7)]
    assert scored.completions == ["Answer: 3", "Answer: 4", "5", "Answer: 5"]
    assert scored.rewards["exact_answer"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert scored.rewards["answer_format"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert scored.total_reward.tolist() == [1.5, 0.5, 1.0, 1.5]
    # group 1: mean 1.0, population std 0.5; group 2: mean 1.25, std 0.25
    expected = [0.5 / 0.500001, -0.5 / 0.500001, -0.25 / 0.250001, 0.25 / 0.250001]
    assert scored.batch.advantages.tolist() == pytest.approx(expected, rel=1e-6)
    # prompt + completion, right-padded; labels are the completion, aligned with the position
    # that predicts it
    assert scored.batch.tokens.tolist() == [
        [13, 14, ANSWER, 3, EOS],
        [13, 14, ANSWER, 4, EOS],
        [15, 5, PAD, PAD, PAD],
        [15, ANSWER, 5, EOS, PAD],
    ]
    i = -100
    assert scored.batch.labels.tolist() == [
        [i, ANSWER, 3, EOS, i],
        [i, ANSWER, 4, EOS, i],
        [5, i, i, i, i],
        [ANSWER, 5, EOS, i, i],
    ]


def _hand_loss_and_grad(logits: torch.Tensor, labels, old, adv, eps, kl_ref=None, beta=0.0):
    """Per-token PPO-clip (+ beta * k3) by hand, token-mean; gradient w.r.t. the logits."""
    n = sum(1 for row in labels for y in row if y != -100)
    loss, clipped, kl_sum = 0.0, 0, 0.0
    grad = torch.zeros_like(logits)
    for b, row in enumerate(labels):
        for t, y in enumerate(row):
            if y == -100:
                continue
            z = logits[b, t].tolist()
            lse = math.log(sum(math.exp(v) for v in z))
            logp = z[y] - lse
            ratio = math.exp(logp - old[b][t])
            a = adv[b]
            clip = min(max(ratio, 1 - eps), 1 + eps)
            # -min(r A, clip(r) A): the gradient flows only through the unclipped branch
            unclipped_wins = ratio * a <= clip * a
            loss += -min(ratio * a, clip * a)
            clipped += clip != ratio
            dloss_dlogp = -ratio * a if unclipped_wins else 0.0
            if kl_ref is not None:
                d = kl_ref[b][t] - logp
                loss += beta * (math.exp(d) - d - 1)
                kl_sum += math.exp(d) - d - 1
                dloss_dlogp += beta * (1 - math.exp(d))
            probs = [math.exp(v - lse) for v in z]
            for k in range(len(z)):
                grad[b, t, k] = dloss_dlogp * ((1.0 if k == y else 0.0) - probs[k]) / n
    return loss / n, clipped / n, kl_sum / n, grad


@pytest.mark.parametrize("micro_batch_size", [4, 1, 3])
def test_policy_loss_and_gradient_match_hand_computation(micro_batch_size: int) -> None:
    _, scored = _scored()
    torch.manual_seed(0)
    logits = torch.randn(4, 5, V, dtype=torch.float64).float()
    model = TableModel(logits)
    labels = scored.batch.labels.tolist()
    current = batched_logprobs(model, scored.batch.tokens, scored.batch.labels, 4)
    # old log-probs chosen so ratios are 1.5 (clipped above for A > 0), 0.7 (clipped below for
    # A < 0), 1.1 and 0.9 (inside the range), per row
    shifts = torch.log(torch.tensor([1.5, 0.7, 1.1, 0.9]))[:, None]
    old = (current - shifts) * (scored.batch.labels != -100)
    batch = with_logprobs(scored.batch, old=old, reference=None)
    settings = PolicyLossSettings(clip_eps=0.2, aggregation="token")
    out = policy_backward(
        model, batch, settings=settings, micro_batch_size=micro_batch_size,
        accumulator=GradientAccumulator(),
    )  # fmt: skip
    loss, clip_fraction, _, grad = _hand_loss_and_grad(
        logits, labels, old.tolist(), scored.batch.advantages.tolist(), 0.2
    )
    assert out["loss"] == pytest.approx(loss, abs=1e-6)
    assert out["num_units"] == 10  # completion tokens: 3 + 3 + 1 + 3
    # rows 0 (ratio 1.5) and 1 (ratio 0.7) are outside [0.8, 1.2]: 6 of the 10 tokens
    assert out["clip_fraction"] == pytest.approx(clip_fraction, abs=1e-6)
    assert clip_fraction == pytest.approx(0.6)
    assert torch.allclose(model.logits.grad, grad.float(), atol=1e-7)
    assert model.logits.grad[0].abs().max() == 0  # clipped with A > 0: no gradient at all
    assert model.logits.grad[1].abs().max() == 0  # clipped with A < 0: no gradient at all


def test_kl_penalty_and_metric_match_hand_computation() -> None:
    _, scored = _scored()
    torch.manual_seed(1)
    logits = torch.randn(4, 5, V)
    model = TableModel(logits)
    current = batched_logprobs(model, scored.batch.tokens, scored.batch.labels, 4)
    mask = scored.batch.labels != -100
    reference = (current + 0.3 * torch.randn(current.shape)) * mask
    batch = with_logprobs(scored.batch, old=None, reference=reference)  # old = current policy
    settings = PolicyLossSettings(clip_eps=0.2, kl_coef=0.1, aggregation="token")
    out = policy_backward(
        model, batch, settings=settings, micro_batch_size=2, accumulator=GradientAccumulator()
    )
    loss, clip_fraction, kl, grad = _hand_loss_and_grad(
        logits, scored.batch.labels.tolist(), current.tolist(), scored.batch.advantages.tolist(),
        0.2, kl_ref=reference.tolist(), beta=0.1,
    )  # fmt: skip
    assert clip_fraction == 0
    assert out["clip_fraction"] == 0
    assert out["kl"] == pytest.approx(kl, abs=1e-6)
    assert kl > 0.01
    assert out["loss"] == pytest.approx(loss, abs=1e-6)
    assert torch.allclose(model.logits.grad, grad.float(), atol=1e-7)


def test_sequence_aggregation_is_the_mean_of_sequence_means() -> None:
    _, scored = _scored()
    model = TableModel(torch.zeros(4, 5, V))  # uniform: every ratio is 1, per-token loss = -A
    out = policy_backward(
        model, with_logprobs(scored.batch, old=None, reference=None),
        settings=PolicyLossSettings(aggregation="sequence"), micro_batch_size=3,
        accumulator=GradientAccumulator(),
    )  # fmt: skip
    adv = scored.batch.advantages.tolist()
    assert out["num_units"] == 4
    assert out["loss"] == pytest.approx(-sum(adv) / 4, abs=1e-7)


def test_rollout_batch_slices_keep_rows_aligned() -> None:
    _, scored = _scored()
    part = scored.batch.slice(1, 3)
    assert isinstance(part, RolloutBatch)
    assert len(part) == 2
    assert part.tokens.tolist() == scored.batch.tokens[1:3].tolist()
    assert part.advantages.tolist() == scored.batch.advantages[1:3].tolist()
