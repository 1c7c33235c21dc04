"""`training.optimizer.implementation`: which kernels AdamW runs, same numbers, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch

from tune.recipes.common.optimization import build_optimizer, implementation_options

ADAMW = {"lr": 1e-2, "weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-8}


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
    assert implementation_options(torch.optim.AdamW, params, "for_loop") == {
        "fused": False,
        "foreach": False,
    }
    with pytest.raises(ValueError, match="RMSprop has no 'fused'"):
        implementation_options(torch.optim.RMSprop, params, "fused")


def test_build_optimizer_sets_the_flags_and_refuses_two_settings() -> None:
    opt = build_optimizer(_params(), "adamw", kwargs={}, **ADAMW)
    assert opt.param_groups[0]["fused"] is True
    opt = build_optimizer(_params(), "adamw", kwargs={}, implementation="for_loop", **ADAMW)
    assert (opt.param_groups[0]["fused"], opt.param_groups[0]["foreach"]) == (False, False)
    opt = build_optimizer(_params(), "adamw", kwargs={"foreach": True}, **ADAMW)  # kwargs win
    assert (opt.param_groups[0]["fused"], opt.param_groups[0]["foreach"]) == (None, True)
    with pytest.raises(ValueError, match=r"kwargs sets foreach and .*implementation='fused'"):
        build_optimizer(_params(), "adamw", kwargs={"foreach": True}, implementation="fused",
                        **ADAMW)  # fmt: skip


def test_fused_adamw_matches_the_for_loop_and_resumes_bit_exactly() -> None:
    results = {}
    for impl in ("fused", "for_loop"):
        params = _params()
        _steps(
            build_optimizer(params, "adamw", kwargs={}, implementation=impl, **ADAMW), params, 0, 4
        )
        results[impl] = [p.detach().clone() for p in params]
    for fused, loop in zip(results["fused"], results["for_loop"], strict=True):
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
    # Two steps, state_dict round trip into a new optimizer, two more: the same bits.
    params = _params()
    opt = build_optimizer(params, "adamw", kwargs={}, **ADAMW)
    _steps(opt, params, 0, 2)
    saved = (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params])
    resumed = [torch.nn.Parameter(p.clone()) for p in saved[1]]
    opt2 = build_optimizer(resumed, "adamw", kwargs={}, **ADAMW)
    opt2.load_state_dict(saved[0])
    _steps(opt2, resumed, 2, 4)
    _steps(opt, params, 2, 4)
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params, results["fused"], strict=True):
        assert torch.equal(a, b)  # run to run
