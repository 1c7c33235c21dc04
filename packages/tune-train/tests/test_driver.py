"""The run driver: same parameters as a hand-written loop, cadence, stop, guard, gradient sync."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from tune.train import (
    GradientAccumulator,
    NonFiniteGuard,
    NothingTrainedError,
    clip_grad_norm,
    cosine_schedule_with_warmup,
)
from tune.train.driver import Cadence, StepResult, TrainingDriver


def _data(steps: int, accum: int) -> list[list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        mbs = []
        for _ in range(accum):
            rows = int(torch.randint(1, 5, (1,), generator=g))
            mbs.append(
                {"x": torch.randn(rows, 4, generator=g), "y": torch.randn(rows, 2, generator=g)}
            )
        out.append(mbs)
    return out


def _setup() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, cosine_schedule_with_warmup(opt, warmup_steps=1, total_steps=5)


def _loss(model: nn.Module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((model(mb["x"]) - mb["y"]) ** 2).sum()


def _rows(mb: dict[str, torch.Tensor]) -> int:
    return mb["x"].shape[0]


def test_driver_matches_a_hand_written_loop() -> None:
    data = _data(5, 3)
    model, opt, sched = _setup()
    for mbs in data:  # the loop the driver replaces
        total = sum(_rows(mb) for mb in mbs)
        for mb in mbs:
            (_loss(model, mb) / total).backward()
        clip_grad_norm(model.parameters(), 0.5)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt, sched = _setup()
    driver = TrainingDriver(model.parameters(), opt, sched, cadence=Cadence(5), max_grad_norm=0.5)
    losses = []

    def step_fn(step: int) -> StepResult:
        metrics = driver.accumulate(data[step], lambda mb: _loss(model, mb), count=_rows)
        metrics.update(driver.optimizer_step(step + 1))
        losses.append(metrics["loss"])
        return StepResult(metrics, tokens=10)

    result = driver.run(step_fn)
    assert result.step == 5
    assert not result.stopped
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert result.metrics["loss"] == losses[-1]
    assert math.isfinite(losses[0])
    assert set(result.metrics) >= {"loss", "num_tokens", "grad_norm", "lr"}


class _Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, Any]]] = []

    def log(self, metrics: Any, step: int) -> None:
        self.logged.append((step, dict(metrics)))


def _driver(model: nn.Module, opt: Any, cadence: Cadence, **kwargs: Any) -> TrainingDriver:
    return TrainingDriver(model.parameters(), opt, cadence=cadence, **kwargs)


def _simple_step(driver: TrainingDriver, model: nn.Module, calls: list[int]) -> Any:
    data = _data(10, 1)

    def step_fn(step: int) -> StepResult:
        calls.append(step)
        metrics = driver.accumulate(data[step], lambda mb: _loss(model, mb), count=_rows)
        metrics.update(driver.optimizer_step(step + 1))
        return StepResult(metrics)

    return step_fn


def test_cadence_of_logs_evaluations_and_saves() -> None:
    model, opt, _ = _setup()
    saves: list[int] = []
    evals: list[int] = []
    sink = _Recorder()
    cadence = Cadence(5, log_every=2, eval_every=2, save_every=2, eval_before=True)
    driver = _driver(
        model, opt, cadence, save=saves.append, sink=sink,
        evaluate=lambda s: evals.append(s) or {"val_loss": float(s)},
    )  # fmt: skip
    calls: list[int] = []
    result = driver.run(_simple_step(driver, model, calls))
    assert calls == [0, 1, 2, 3, 4]
    assert saves == [2, 4, 5]  # periodic saves, then the final one
    assert evals == [0, 2, 4, 5]  # before, on the cadence, final
    train_logs = [s for s, m in sink.logged if "loss" in m]
    assert train_logs == [2, 4, 5]
    assert result.evaluation == {"val_loss": 5.0}
    assert sorted(result.evaluations) == [0, 2, 4, 5]


def test_final_evaluation_is_not_repeated_when_it_just_ran() -> None:
    model, opt, _ = _setup()
    evals: list[int] = []
    driver = _driver(model, opt, Cadence(4, eval_every=2),
                     evaluate=lambda s: evals.append(s) or {"v": 1.0})  # fmt: skip
    driver.run(_simple_step(driver, model, []))
    assert evals == [2, 4]


def test_resumed_run_continues_from_its_step() -> None:
    model, opt, _ = _setup()
    calls: list[int] = []
    driver = _driver(model, opt, Cadence(5, eval_before=True), evaluate=lambda s: {"v": 0.0})
    result = driver.run(_simple_step(driver, model, calls), start_step=3)
    assert calls == [3, 4]
    assert result.step == 5
    assert 0 not in result.evaluations


def test_stop_signal_saves_the_step_and_returns_early() -> None:
    model, opt, _ = _setup()
    polls: list[int] = []
    saves: list[int] = []
    evals: list[int] = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) == 3

    driver = _driver(model, opt, Cadence(10), save=saves.append, should_stop=should_stop,
                     evaluate=lambda s: evals.append(s) or {"v": 0.0})  # fmt: skip
    calls: list[int] = []
    result = driver.run(_simple_step(driver, model, calls))
    assert result.stopped
    assert result.step == 3
    assert calls == [0, 1, 2]
    assert len(polls) == 3  # exactly once per step
    assert saves == [3]
    assert evals == []


def test_every_step_non_finite_fails_without_saving() -> None:
    model, opt, _ = _setup()
    saves: list[int] = []
    driver = _driver(model, opt, Cadence(3), guard=NonFiniteGuard("skip"), save=saves.append)
    data = _data(3, 1)

    def step_fn(step: int) -> StepResult:
        metrics = driver.accumulate(
            data[step], lambda mb: _loss(model, mb) * float("nan"), count=_rows
        )
        metrics.update(driver.optimizer_step(step + 1))
        return StepResult(metrics)

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NothingTrainedError):
        driver.run(step_fn)
    assert saves == []
    for got, want in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_one_non_finite_step_is_skipped_and_counted() -> None:
    model, opt, _ = _setup()
    sink = _Recorder()
    driver = _driver(model, opt, Cadence(3), guard=NonFiniteGuard("skip"), sink=sink)
    data = _data(3, 1)
    seen: list[list[torch.Tensor]] = []

    def step_fn(step: int) -> StepResult:
        scale = float("inf") if step == 1 else 1.0
        metrics = driver.accumulate(data[step], lambda mb: _loss(model, mb) * scale, count=_rows)
        metrics.update(driver.optimizer_step(step + 1))
        seen.append([p.detach().clone() for p in model.parameters()])
        return StepResult(metrics)

    driver.run(step_fn)
    for a, b in zip(seen[0], seen[1], strict=True):  # step 2 skipped: weights unchanged
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sink.logged[-1][1]["skipped_steps"] == 1


def test_gradient_sync_only_on_the_last_micro_batch() -> None:
    model, opt, _ = _setup()
    flags: list[bool] = []
    driver = _driver(model, opt, Cadence(2), gradient_sync=flags.append)
    data = _data(2, 3)

    def step_fn(step: int) -> StepResult:
        return StepResult(driver.accumulate(data[step], lambda mb: _loss(model, mb), count=_rows))

    driver.run(step_fn)
    assert flags == [False, False, True, False, False, True]


def test_accumulation_normalises_by_the_global_count() -> None:
    model, opt, _ = _setup()
    halves = GradientAccumulator(lambda t: t * 2)  # two identical ranks
    driver = _driver(model, opt, Cadence(1), accumulator=halves)
    mbs = _data(1, 2)[0]
    metrics = driver.accumulate(mbs, lambda mb: _loss(model, mb), count=_rows)
    rows = sum(_rows(mb) for mb in mbs)
    assert metrics["num_tokens"] == 2 * rows
    assert metrics["loss"] == pytest.approx(
        2 * sum(float(_loss(model, mb).detach()) for mb in mbs) / (2 * rows), rel=1e-6
    )
