"""Each preference loss against numbers computed from its paper's formula with `math`."""

from __future__ import annotations

import math

import pytest
import torch

from tune.train import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    reference_free_dpo_loss,
    simpo_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_dpo_by_hand() -> None:
    # pair 0: h = (-1 - -1.5) - (-3 - -2) = 1.5, beta h = 0.75 -> log(1 + e^-0.75) = 0.386871
    # pair 1: h = (-4 - -3) - (-2 - -2) = -1.0, beta h = -0.5 -> log(1 + e^0.5) = 0.97408
    out = dpo_loss(t(-1.0, -4.0), t(-3.0, -2.0), t(-1.5, -3.0), t(-2.0, -2.0), beta=0.5)
    assert out.losses.tolist() == pytest.approx([0.386871, 0.974077], abs=1e-6)
    assert out.losses.tolist() == pytest.approx([neg_log_sigmoid(0.75), neg_log_sigmoid(-0.5)])
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.0])


def test_conservative_dpo_label_smoothing_by_hand() -> None:
    out = dpo_loss(t(-1.0), t(-3.0), t(-1.5), t(-2.0), beta=0.5, label_smoothing=0.1)
    expected = 0.9 * neg_log_sigmoid(0.75) + 0.1 * neg_log_sigmoid(-0.75)
    assert float(out.losses[0]) == pytest.approx(expected)


def test_dpo_gradient_by_hand() -> None:
    pc = t(-1.0).requires_grad_()
    dpo_loss(pc, t(-3.0), t(-1.5), t(-2.0), beta=0.5).losses.sum().backward()
    # d/dpc -log sigma(beta h) = -beta (1 - sigma(beta h))
    assert float(pc.grad[0]) == pytest.approx(-0.5 * (1 - sigmoid(0.75)))


def test_reference_free_dpo_by_hand() -> None:
    out = reference_free_dpo_loss(t(-1.0), t(-3.0), beta=0.5)
    assert float(out.losses[0]) == pytest.approx(neg_log_sigmoid(1.0))  # 0.31326
    assert float(out.losses[0]) == pytest.approx(0.313262, abs=1e-6)


def test_ipo_by_hand() -> None:
    # h = 1.5, target 1 / (2 * 0.25) = 2 -> (1.5 - 2)^2 = 0.25
    out = ipo_loss(t(-1.0), t(-3.0), t(-1.5), t(-2.0), tau=0.25)
    assert float(out.losses[0]) == pytest.approx(0.25)


def test_simpo_by_hand() -> None:
    # beta (ac - ar) - gamma = 2 * 0.75 - 1 = 0.5 -> log(1 + e^-0.5) = 0.474077
    out = simpo_loss(t(-0.5), t(-1.25), beta=2.0, gamma=1.0)
    assert float(out.losses[0]) == pytest.approx(neg_log_sigmoid(0.5))
    assert float(out.losses[0]) == pytest.approx(0.474077, abs=1e-6)
    assert float(out.chosen_rewards[0]) == pytest.approx(-1.0)


def test_orpo_by_hand() -> None:
    ac, ar, lam = -0.2, -0.9, 0.5
    log_odds = (ac - math.log(1 - math.exp(ac))) - (ar - math.log(1 - math.exp(ar)))
    expected = -ac + lam * neg_log_sigmoid(log_odds)
    out = orpo_loss(t(ac), t(ar), lambda_=lam)
    assert float(out.losses[0]) == pytest.approx(expected)
    # an explicit SFT term replaces -ac
    out = orpo_loss(t(ac), t(ar), lambda_=lam, chosen_nll=t(1.0))
    assert float(out.losses[0]) == pytest.approx(1.0 + lam * neg_log_sigmoid(log_odds))


def test_kto_by_hand() -> None:
    # z0 = mean([-1 - -1.4, -2 - -1.8]) = mean([0.4, -0.2]) = 0.1
    z0 = kto_reference_point(t(-1.0, -2.0), t(-1.4, -1.8))
    assert float(z0) == pytest.approx(0.1)
    assert float(kto_reference_point(t(-3.0), t(-1.0))) == 0.0  # clamped at 0
    # r = [0.5, -1.0]; desirable: 1 - sigma(0.5 (0.5 - 0.1)); undesirable: 1.5 (1 - sigma(0.5 (0.1 + 1)))
    out = kto_loss(
        t(-2.0, -3.0),
        t(-2.5, -2.0),
        torch.tensor([True, False]),
        z0,
        beta=0.5,
        desirable_weight=1.0,
        undesirable_weight=1.5,
    )
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(0.2), 1.5 * (1 - sigmoid(0.55))])
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([0.0, -0.5])


def test_preference_losses_reject_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(t(-1.0, -2.0), t(-1.0), t(-1.0), t(-1.0))
    with pytest.raises(TypeError, match="bool"):
        kto_loss(t(-1.0), t(-1.0), torch.tensor([1]), t(0.0))
