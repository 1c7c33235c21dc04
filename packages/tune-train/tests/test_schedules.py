"""LR schedules reach the documented values at key steps, read from a real optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from tune.train import (
    constant_schedule_with_warmup,
    cosine_schedule_with_warmup,
    linear_schedule_with_warmup,
    warmup_stable_decay_schedule,
)

PEAK = 0.5


def _lrs(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"] / PEAK)
        opt.step()
        sched.step()
    return lrs


def test_linear_with_warmup() -> None:
    f = _lrs(lambda o: linear_schedule_with_warmup(o, warmup_steps=4, total_steps=12), 16)
    # warmup (s + 1) / 5, then 1 - (s - 4) / 8, then 0
    expected = {0: 0.2, 3: 0.8, 4: 1.0, 6: 0.75, 8: 0.5, 11: 0.125, 12: 0.0, 15: 0.0}
    for step, value in expected.items():
        assert f[step] == pytest.approx(value, abs=1e-12), step


def test_cosine_with_warmup_and_floor() -> None:
    f = _lrs(lambda o: cosine_schedule_with_warmup(o, warmup_steps=4, total_steps=12), 14)
    assert f[0] == pytest.approx(0.2)
    assert f[4] == pytest.approx(1.0)
    assert f[6] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.853553
    assert f[8] == pytest.approx(0.5)
    assert f[12] == pytest.approx(0.0, abs=1e-12)
    g = _lrs(
        lambda o: cosine_schedule_with_warmup(o, warmup_steps=0, total_steps=10, min_lr_ratio=0.1),
        12,
    )
    assert g[0] == pytest.approx(1.0)
    assert g[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert g[10] == pytest.approx(0.1)
    assert g[11] == pytest.approx(0.1)


def test_constant_with_warmup() -> None:
    f = _lrs(lambda o: constant_schedule_with_warmup(o, warmup_steps=3), 8)
    assert f == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("shape", "mid"), [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))]
)
def test_warmup_stable_decay(shape: str, mid: float) -> None:
    f = _lrs(
        lambda o: warmup_stable_decay_schedule(
            o, warmup_steps=2, stable_steps=3, decay_steps=4, decay_shape=shape, min_lr_ratio=0.0
        ),
        12,
    )
    assert f[0] == pytest.approx(1 / 3)
    assert f[1] == pytest.approx(2 / 3)
    assert f[2:6] == pytest.approx([1.0, 1.0, 1.0, 1.0])  # plateau, decay starts at step 5
    assert f[7] == pytest.approx(mid)
    assert f[9] == pytest.approx(0.0, abs=1e-12)
    assert f[11] == pytest.approx(0.0, abs=1e-12)


def test_schedules_reject_bad_arguments() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"total_steps \(3\) must be >= warmup_steps \(5\)"):
        linear_schedule_with_warmup(opt, warmup_steps=5, total_steps=3)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        cosine_schedule_with_warmup(opt, warmup_steps=0, total_steps=3, min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="decay_shape"):
        warmup_stable_decay_schedule(
            opt, warmup_steps=0, stable_steps=1, decay_steps=1, decay_shape="exp"
        )
