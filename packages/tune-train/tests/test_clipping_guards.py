"""Clipping reports the pre-clip norm; the non-finite guard skips (state untouched) or halts."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from tune.train import NonFiniteError, NonFiniteGuard, NothingTrainedError, clip_grad_norm


def test_clip_grad_norm_returns_norm_before_clipping_and_clips() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert float(norm) == pytest.approx(5.0)
    assert float(torch.cat([a.grad, b.grad]).norm()) == pytest.approx(1.0, rel=1e-5)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert float(clip_grad_norm([a, b], max_norm=None)) == pytest.approx(5.0)
    assert a.grad.tolist() == [3.0, 0.0]  # measuring only does not touch the gradients
    assert float(clip_grad_norm([nn.Parameter(torch.zeros(1))], max_norm=1.0)) == 0.0


def _train(guard: NonFiniteGuard, nan_at: int, steps: int = 5):
    """Tiny regression with AdamW; the loss of step `nan_at` is made NaN. Returns snapshots."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    snapshots = []
    for step in range(steps):
        before = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        loss = ((model(x) - y) ** 2).mean()
        if step == nan_at:
            loss = loss * float("nan")
        loss.backward()
        norm = clip_grad_norm(model.parameters(), max_norm=1.0)
        stepped = guard.step(opt, step=step, loss=loss, grad_norm=norm)
        after = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        snapshots.append((stepped, before, after))
    return snapshots


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_skip_leaves_parameters_and_optimizer_state_unchanged(caplog) -> None:
    guard = NonFiniteGuard("skip", max_skipped=3)
    with caplog.at_level(logging.WARNING):
        snaps = _train(guard, nan_at=2)
    assert [s[0] for s in snaps] == [True, True, False, True, True]
    _, (params_before, opt_before), (params_after, opt_after) = snaps[2]
    assert _same(params_before, params_after)
    state_before, state_after = opt_before["state"], opt_after["state"]
    for idx in state_before:
        assert float(state_after[idx]["step"]) == float(state_before[idx]["step"]) == 2.0
        assert torch.equal(state_after[idx]["exp_avg"], state_before[idx]["exp_avg"])
        assert torch.equal(state_after[idx]["exp_avg_sq"], state_before[idx]["exp_avg_sq"])
    # the next step trains again, from finite values
    _, (p3_before, _), (p3_after, o3_after) = snaps[3]
    assert not _same(p3_before, p3_after)
    assert all(torch.isfinite(v).all() for v in p3_after.values())
    assert float(o3_after["state"][0]["step"]) == 3.0
    assert guard.metrics() == {"skipped_steps": 1, "consecutive_skips": 0}
    assert guard.last_skipped_step == 2
    assert "non-finite loss=nan" in caplog.text
    assert "step 2" in caplog.text


def test_halt_raises_naming_the_step() -> None:
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss=nan, grad_norm=nan at step 3.*'halt'"
    ):
        _train(NonFiniteGuard("halt"), nan_at=3)


def test_skip_cap_halts_when_exceeded() -> None:
    guard = NonFiniteGuard("skip", max_skipped=1)
    assert guard.check(0, float("inf"), 1.0) is False
    assert guard.metrics() == {"skipped_steps": 1, "consecutive_skips": 1}
    with pytest.raises(NonFiniteError, match="2 steps skipped in total, more than max_skipped=1"):
        guard.check(5, 1.0, torch.tensor(float("nan")))
    restored = NonFiniteGuard("skip", max_skipped=1)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped_steps == 2


def test_guard_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match="'skip' or 'halt'"):
        NonFiniteGuard("ignore")  # type: ignore[arg-type]


def test_every_step_skipped_is_detected_with_a_clear_error() -> None:
    guard = NonFiniteGuard("skip", max_skipped=10)
    for step in range(8):
        assert guard.check(step, float("nan"), 1.0) is False
    assert guard.applied_steps == 0
    assert guard.checked_steps == 8
    assert guard.all_skipped
    with pytest.raises(NothingTrainedError) as info:
        guard.check_trained()
    assert str(info.value).startswith(
        "every one of the 8 steps was skipped as non-finite (loss=nan): nothing was trained"
    )
    assert isinstance(info.value, NonFiniteError)  # caught by handlers of the guard's errors


def test_check_trained_passes_with_one_applied_step_or_none_checked() -> None:
    guard = NonFiniteGuard("skip", max_skipped=10)
    guard.check_trained()  # nothing checked (e.g. resumed at the last step): not an error
    assert not guard.all_skipped
    guard.check(0, float("inf"), None)
    guard.check(1, 2.0, torch.tensor(float("nan")))
    assert guard.all_skipped
    guard.check(2, 1.5, 0.3)
    assert not guard.all_skipped
    assert (guard.applied_steps, guard.skipped_steps) == (1, 2)
    guard.check_trained()


def test_guard_counts_survive_resume() -> None:
    first = NonFiniteGuard("skip", max_skipped=10)
    for step in range(3):
        first.check(step, float("nan"), 1.0)
    state = first.state_dict()
    assert state == {
        "skipped_steps": 3,
        "applied_steps": 0,
        "consecutive_skips": 3,
        "last_skipped_step": 2,
        "last_non_finite": "loss=nan",
    }
    resumed = NonFiniteGuard("skip", max_skipped=10)
    resumed.load_state_dict(state)
    for step in range(3, 5):
        resumed.check(step, 1.0, float("inf"))
    with pytest.raises(NothingTrainedError, match=r"every one of the 5 steps .*\(grad_norm=inf\)"):
        resumed.check_trained()
    assert resumed.metrics() == {"skipped_steps": 5, "consecutive_skips": 5}
    # a resumed run that trained before the checkpoint keeps counting that
    trained = NonFiniteGuard("skip", max_skipped=10)
    trained.load_state_dict({**state, "applied_steps": 4, "consecutive_skips": 0})
    trained.check(9, float("nan"), 1.0)
    trained.check_trained()
