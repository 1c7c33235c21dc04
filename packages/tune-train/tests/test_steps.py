"""tune.train.steps on a toy language model: each step equals its formula computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.train.steps import (
    DistillLossSettings,
    PolicyLossSettings,
    PreferenceObjective,
    RolloutBatch,
    batch_logprobs,
    distill_micro_batch_loss,
    evaluate_token_loss,
    micro_batch_loss,
    micro_batch_policy_loss,
    micro_batch_preference,
    rollout_advantages,
    rollout_tensors,
)

V, D = 17, 8


class ToyLM(nn.Module):
    """The call convention of tune's models: tokens in, logits (or hidden states) out."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(V, D)
        self.mix = nn.Linear(D, D)
        self.output = nn.Linear(D, V, bias=False)

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False, **_: torch.Tensor):
        hidden = torch.tanh(self.mix(self.embed(tokens)))  # [B, T, D]
        return hidden if return_hidden else self.output(hidden)


def _batch(rows: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (rows, length), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    labels[:, -1] = -100
    labels[:, :2] = -100  # a prompt: not trained
    return {"tokens": tokens, "labels": labels}


def _ce_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["tokens"])
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")


def _seq_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logp = model(batch["tokens"]).log_softmax(-1)
    mask = batch["labels"] != -100
    picked = logp.gather(-1, batch["labels"].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@pytest.mark.parametrize("fused", [False, True])
def test_token_step_is_the_summed_cross_entropy(fused: bool) -> None:
    model, batch = ToyLM(0), _batch(3, 9)
    loss = micro_batch_loss(model, batch, fused=fused)
    assert int(loss.num_tokens) == int((batch["labels"] != -100).sum())
    torch.testing.assert_close(loss.loss_sum, _ce_sum(model, batch), rtol=1e-5, atol=1e-5)
    mean = evaluate_token_loss(model, [batch, _batch(2, 9, seed=1)], fused=fused)
    both = [batch, _batch(2, 9, seed=1)]
    total = sum(float(_ce_sum(model, b)) for b in both)
    count = sum(int((b["labels"] != -100).sum()) for b in both)
    assert mean == pytest.approx(total / count, rel=1e-6)


def test_dpo_step_matches_the_formula_with_a_callable_reference() -> None:
    policy, frozen = ToyLM(0), ToyLM(1)
    batch = _batch(4, 8)  # rows 0-1 chosen, rows 2-3 rejected
    objective = PreferenceObjective("dpo", beta=0.3)
    calls = []

    def reference(b: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return batch_logprobs(frozen, b, average=False, fused=False)

    result = micro_batch_preference(policy, batch, objective, reference=reference, fused=False)
    assert calls == [False]  # the reference runs without autograd
    pi, ref = _seq_logprobs(policy, batch), _seq_logprobs(frozen, batch)
    margin = 0.3 * ((pi[:2] - ref[:2]) - (pi[2:] - ref[2:]))
    torch.testing.assert_close(result.losses, -F.logsigmoid(margin), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs a reference callable"):
        micro_batch_preference(policy, batch, objective, reference=None, fused=False)
    free = micro_batch_preference(
        policy, batch, PreferenceObjective("simpo"), reference=None, fused=False
    )
    assert free.losses.shape == (2,)


def test_distillation_step_mixes_cross_entropy_and_kl() -> None:
    student, teacher, batch = ToyLM(0), ToyLM(1), _batch(2, 7)
    ce_only = distill_micro_batch_loss(student, teacher, batch, DistillLossSettings(ce_weight=1.0))
    torch.testing.assert_close(
        ce_only.total.loss_sum, _ce_sum(student, batch), rtol=1e-5, atol=1e-5
    )
    same = distill_micro_batch_loss(student, student, batch, DistillLossSettings(ce_weight=0.0))
    assert float(same.kl_sum) == pytest.approx(0.0, abs=1e-5)
    mixed = distill_micro_batch_loss(student, teacher, batch, DistillLossSettings(ce_weight=0.25))
    expected = 0.25 * mixed.ce_sum + 0.75 * mixed.kl_sum
    torch.testing.assert_close(mixed.total.loss_sum.detach(), expected, rtol=1e-6, atol=1e-6)
    assert float(mixed.kl_sum) > 0


def test_grpo_pieces() -> None:
    tokens, labels = rollout_tensors([[1, 2], [3]], [[4, 5], []], pad_id=0)
    assert tokens.tolist() == [[1, 2, 4, 5], [3, 0, 0, 0]]
    assert labels.tolist() == [[-100, 4, 5, -100], [-100, -100, -100, -100]]
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    adv = rollout_advantages(rewards, 3, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0]))
    model = ToyLM(0)
    batch = RolloutBatch(tokens, labels, torch.tensor([1.0, -1.0]))
    loss = micro_batch_policy_loss(model, batch, PolicyLossSettings())
    # On-policy (no old log-probs) every ratio is 1: the loss is -sum of advantages over the
    # trained tokens (2 of row 0, none of row 1), and its gradient the policy gradient.
    assert int(loss.num_units) == 2
    assert float(loss.loss_sum) == pytest.approx(-2.0, abs=1e-6)
    assert float(loss.clip_fraction) == 0.0
