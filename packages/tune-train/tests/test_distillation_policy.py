"""KD and policy-gradient losses against hand-computed small cases."""

from __future__ import annotations

import math

import pytest
import torch

from tune.train import group_advantages, k3_kl, kl_distillation_loss, policy_gradient_loss


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


STUDENT = [[1.0, 0.0, -1.0], [0.3, 0.3, 0.3], [2.0, -1.0, 0.5]]
TEACHER = [[0.0, 1.0, 0.0], [5.0, 0.0, 0.0], [1.0, 1.0, -2.0]]
LABELS = [1, -100, 0]  # the middle position is not trained


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_distillation_by_hand(kind: str, temperature: float) -> None:
    expected = 0.0
    for i in (0, 2):
        ps = softmax([x / temperature for x in STUDENT[i]])
        pt = softmax([x / temperature for x in TEACHER[i]])
        fwd, rev = kl(pt, ps), kl(ps, pt)
        expected += {"forward": fwd, "reverse": rev, "symmetric": 0.3 * fwd + 0.7 * rev}[kind]
    expected *= temperature**2
    out = kl_distillation_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(LABELS),
        kind=kind,
        temperature=temperature,
        mix=0.3,
    )
    assert float(out.loss_sum) == pytest.approx(expected, rel=1e-5)
    assert int(out.num_tokens) == 2


def test_chunked_kl_matches_unchunked_with_grads_and_teacher_gets_none() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 9, 40, generator=g, requires_grad=True)
    teacher = torch.randn(4, 9, 40, generator=g, requires_grad=True)
    labels = torch.randint(0, 40, (4, 9), generator=g)
    labels[:, :3] = -100
    ref = kl_distillation_loss(student, teacher, labels, kind="reverse")
    (ref_grad,) = torch.autograd.grad(ref.loss_sum, student)
    out = kl_distillation_loss(student, teacher, labels, kind="reverse", chunk_size=5)
    out.loss_sum.backward()
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert teacher.grad is None
    assert torch.count_nonzero(student.grad[:, :3]) == 0


def test_kl_of_identical_distributions_is_zero() -> None:
    logits = torch.randn(5, 11)
    out = kl_distillation_loss(
        logits, logits.clone(), torch.zeros(5, dtype=torch.long), kind="symmetric"
    )
    assert abs(float(out.loss_sum)) < 1e-6


def test_group_advantages_by_hand() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    # group 0: mean 0.5, population std 0.5; group 1: all equal -> 0
    torch.testing.assert_close(
        adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0, 0, 0, 0]), atol=1e-5, rtol=0
    )
    centred = group_advantages(torch.tensor([3.0, 1.0]), 2, scale_by_std=False)
    torch.testing.assert_close(centred, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        group_advantages(torch.zeros(4), 3)


def test_ppo_clip_by_hand_positive_and_negative_advantage() -> None:
    # token 0: ratio e^0.2 = 1.2214 (> 1 + 0.2), token 1: ratio 1, token 2 masked out
    f64 = torch.float64
    logprobs = torch.tensor([[-1.0, -0.5, 0.0], [-1.0, -0.5, 0.0]], dtype=f64, requires_grad=True)
    old = torch.tensor([[-1.2, -0.5, 0.0], [-1.2, -0.5, 0.0]], dtype=f64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    out = policy_gradient_loss(logprobs, old, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2)
    assert out.loss_sum.dtype == f64
    r = math.exp(0.2)
    # A=+1: -(min(r, 1.2) + 1) = -2.2 ; A=-1: -(min(-r, -1.2) - 1) = r + 1
    assert float(out.loss_sum.detach()) == pytest.approx(-2.2 + r + 1.0, rel=1e-9)
    assert int(out.num_units) == 4
    assert float(out.clip_fraction) == pytest.approx(0.5)  # token 0 of each sequence
    out.loss_sum.backward()
    # clipped with A>0 -> no gradient; unclipped -> d(-r A)/dlogp = -r A
    expected_grad = torch.tensor([[0.0, -1.0, 0.0], [r, 1.0, 0.0]], dtype=f64)
    torch.testing.assert_close(logprobs.grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_grpo_kl_penalty_and_sequence_aggregation_by_hand() -> None:
    logprobs = torch.tensor([[-1.0, -0.5, -0.3], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.1, -0.7, -0.3], [-2.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([0.5, -2.0])
    k = [math.exp(-0.1) + 0.1 - 1, math.exp(-0.2) + 0.2 - 1, 0.0, math.exp(-0.5) + 0.5 - 1]
    torch.testing.assert_close(
        k3_kl(logprobs, ref)[mask.bool()], torch.tensor(k), rtol=1e-5, atol=1e-7
    )
    beta = 0.04
    # ratio = 1 everywhere (old = current): per-token loss = -A + beta * k3
    seq0 = sum(-0.5 + beta * x for x in k[:3]) / 3
    seq1 = 2.0 + beta * k[3]
    out = policy_gradient_loss(
        logprobs,
        logprobs.detach(),
        adv,
        mask,
        reference_logprobs=ref,
        kl_coef=beta,
        aggregation="sequence",
    )
    assert float(out.loss_sum) == pytest.approx(seq0 + seq1, rel=1e-6)
    assert int(out.num_units) == 2
    assert float(out.kl_mean) == pytest.approx(sum(k) / 4, rel=1e-5)
    tok = policy_gradient_loss(
        logprobs,
        logprobs.detach(),
        adv,
        mask,
        reference_logprobs=ref,
        kl_coef=beta,
        aggregation="token",
    )
    assert float(tok.loss_sum) == pytest.approx(3 * -0.5 + 2.0 + beta * sum(k), rel=1e-6)
    assert int(tok.num_units) == 4
    with pytest.raises(ValueError, match="reference_logprobs"):
        policy_gradient_loss(logprobs, logprobs, adv, mask, kl_coef=0.1)
