"""Optimizer kernels (fused, foreach, for-loop: same numbers, exact resume) and schedules by run."""

from __future__ import annotations

import copy

import pytest
import torch

from tune.train import (
    build_optimizer,
    build_schedule,
    constant_schedule_with_warmup,
    cosine_schedule_with_warmup,
    implementation_options,
    linear_schedule_with_warmup,
    warmup_stable_decay_schedule,
)

ADAMW = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-8}


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5))]


def _steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], a: int, b: int) -> None:
    for i in range(a, b):
        for j, p in enumerate(params):
            p.grad = torch.full_like(p, 0.1 * (i + 1)) + torch.arange(p.numel()).view_as(p) * j
        opt.step()


def test_auto_picks_fused_then_foreach_and_for_loop_turns_both_off() -> None:
    params = _params()
    assert implementation_options(torch.optim.AdamW, params, "auto") == {"fused": True}
    assert implementation_options(torch.optim.RMSprop, params, "auto") == {"foreach": True}
    half = [torch.nn.Parameter(torch.randn(3, dtype=torch.float16)), *params]
    assert implementation_options(torch.optim.AdamW, half, "auto") == {"fused": True}
    ints = [torch.zeros(3, dtype=torch.int64), *params]  # not a float tensor: no fused kernel
    assert implementation_options(torch.optim.AdamW, ints, "auto") == {"foreach": True}
    assert implementation_options(torch.optim.AdamW, [], "auto") == {}
    assert implementation_options(torch.optim.AdamW, params, "for_loop") == {
        "fused": False,
        "foreach": False,
    }
    with pytest.raises(ValueError, match="implementation='fused': RMSprop has no 'fused'"):
        implementation_options(torch.optim.RMSprop, params, "fused")
    with pytest.raises(ValueError, match="implementation='fast': expected auto, fused"):
        implementation_options(torch.optim.AdamW, params, "fast")  # type: ignore[arg-type]


def test_build_optimizer_sets_the_flags_and_refuses_two_settings() -> None:
    opt = build_optimizer(torch.optim.AdamW, _params(), **ADAMW)
    assert opt.param_groups[0]["fused"] is True
    assert opt.param_groups[0]["weight_decay"] == 0.1
    opt = build_optimizer(torch.optim.AdamW, _params(), implementation="for_loop", **ADAMW)
    assert (opt.param_groups[0]["fused"], opt.param_groups[0]["foreach"]) == (False, False)
    opt = build_optimizer(torch.optim.AdamW, _params(), foreach=True, **ADAMW)  # options win
    assert (opt.param_groups[0]["fused"], opt.param_groups[0]["foreach"]) == (None, True)
    with pytest.raises(ValueError, match=r"kwargs set foreach and implementation='fused'"):
        build_optimizer(torch.optim.AdamW, _params(), implementation="fused", foreach=True)
    # A generator is read once: the kernel choice and the optimizer see the same parameters.
    sgd = build_optimizer(torch.optim.SGD, (p for p in _params()), lr=0.1)
    assert len(sgd.param_groups[0]["params"]) == 2


def test_fused_adamw_matches_the_for_loop_and_resumes_bit_exactly() -> None:
    results = {}
    for impl in ("fused", "for_loop"):
        params = _params()
        opt = build_optimizer(torch.optim.AdamW, params, implementation=impl, **ADAMW)
        _steps(opt, params, 0, 4)
        results[impl] = [p.detach().clone() for p in params]
    for fused, loop in zip(results["fused"], results["for_loop"], strict=True):
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
    # Two steps, state_dict round trip into a new optimizer, two more: the same bits.
    params = _params()
    opt = build_optimizer(torch.optim.AdamW, params, **ADAMW)
    _steps(opt, params, 0, 2)
    saved = (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params])
    resumed = [torch.nn.Parameter(p.clone()) for p in saved[1]]
    opt2 = build_optimizer(torch.optim.AdamW, resumed, **ADAMW)
    opt2.load_state_dict(saved[0])
    _steps(opt2, resumed, 2, 4)
    _steps(opt, params, 2, 4)
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params, results["fused"], strict=True):
        assert torch.equal(a, b)  # run to run


def _rates(factory: object, steps: int = 10, **kwargs: object) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_schedule(factory, opt, **kwargs)  # type: ignore[arg-type]
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_build_schedule_gives_each_factory_the_arguments_it_takes() -> None:
    run = {"warmup_steps": 2, "total_steps": 10, "min_lr_ratio": 0.1}
    assert _rates(constant_schedule_with_warmup, **run) == pytest.approx([1 / 3, 2 / 3] + [1.0] * 8)
    linear = _rates(linear_schedule_with_warmup, 11, **run)
    assert (linear[2], linear[10]) == pytest.approx((1.0, 0.1))
    cosine = _rates(cosine_schedule_with_warmup, 11, **run)
    assert (cosine[6], cosine[10]) == pytest.approx((0.55, 0.1))
    # WSD: the last 20% of the 8 post-warmup steps (1 step, at least one) decay to the floor.
    wsd = _rates(warmup_stable_decay_schedule, 11, **run)
    assert wsd[2:11] == pytest.approx([1.0] * 8 + [0.1])
    wsd = _rates(warmup_stable_decay_schedule, 21, warmup_steps=0, total_steps=20)
    assert wsd[14:21] == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])  # decay: 16..20


def test_build_schedule_calls_another_factory_with_warmup_and_total_steps() -> None:
    seen = {}

    def factory(
        optimizer: torch.optim.Optimizer, **kwargs: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        seen.update(kwargs)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)

    assert _rates(factory, 2, warmup_steps=3, total_steps=7, min_lr_ratio=0.2) == [0.5, 0.5]
    assert seen == {"warmup_steps": 3, "total_steps": 7}
