"""The run driver: one training loop around a step function.

A recipe (or any embedder) writes only what is its own: how one optimizer step's forward and
backward go. The driver does the rest once, for every objective:

- token-normalised gradient accumulation over micro-batches (``accumulate``), with gradient
  synchronisation only on the last micro-batch (FSDP2);
- clipping, the non-finite guard, the optimizer and the LR schedule (``optimizer_step``);
- the cadence of a run (``run``): metrics every ``log_every`` steps, evaluation and
  checkpoints on their own cadence, the stop check exactly once per step on every rank, the
  progress bar, tokens/s and peak memory, and a final evaluation and save.

Checkpoint saving, evaluation and the stop check are callables, so the driver knows nothing of
formats, models or process groups::

    driver = TrainingDriver(params, optimizer, scheduler, cadence=Cadence(total_steps=100),
                            save=lambda step: ..., evaluate=lambda step: {...})

    def step_fn(step):
        batches = [next(it) for _ in range(accum)]
        metrics = driver.accumulate(batches, lambda mb: loss_sum(model, mb),
                                    count=lambda mb: (mb["labels"] != -100).sum())
        metrics.update(driver.optimizer_step(step + 1))
        return StepResult(metrics, tokens=...)

    result = driver.run(step_fn, start_step=0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from tune.train.accumulation import GradientAccumulator
from tune.train.clipping import clip_grad_norm
from tune.train.guards import NonFiniteGuard
from tune.train.losses.cross_entropy import TokenLoss
from tune.train.meters import ThroughputMeter

logger = logging.getLogger(__name__)

Metrics = dict[str, float]


class ProgressBar(Protocol):
    """What the driver calls on a progress bar (``tqdm`` fits)."""

    def update(self, n: int = 1) -> Any:
        """Advance by ``n`` steps."""

    def set_postfix(self, **values: Any) -> Any:
        """Show the latest values."""

    def close(self) -> Any:
        """Finish the bar."""


class MetricSink(Protocol):
    """Where metrics go (any ``tune.train.loggers`` logger)."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar metrics at a step."""


@dataclass(frozen=True)
class Cadence:
    """When a run logs, evaluates and saves.

    Args:
        total_steps: optimizer steps of the whole run (resumed runs included).
        log_every: log training metrics every this many steps (and at the last step).
        eval_every: evaluate every this many steps; None: only before (``eval_before``) and
            after training.
        save_every: commit a checkpoint every this many steps; None: only at the end (and on a
            stop signal).
        eval_before: evaluate once before the first step of a fresh run.
    """

    total_steps: int
    log_every: int = 1
    eval_every: int | None = None
    save_every: int | None = None
    eval_before: bool = False


@dataclass
class StepResult:
    """What a step function returns.

    Args:
        metrics: the step's metrics (global values, ``loss`` among them), logged as they are.
        tokens: non-padding tokens this rank processed (for tokens/s); 0 skips throughput.
    """

    metrics: Metrics
    tokens: int = 0


@dataclass
class RunResult:
    """How a run ended.

    Args:
        step: the last completed step.
        metrics: the last step's metrics (empty when no step ran in this process).
        evaluation: the last evaluation's metrics (None when none ran).
        stopped: ended early by a stop signal (a checkpoint of ``step`` was committed).
        evaluations: every evaluation of this process by step.
    """

    step: int
    metrics: Metrics = field(default_factory=dict)
    evaluation: Metrics | None = None
    stopped: bool = False
    evaluations: dict[int, Metrics] = field(default_factory=dict)


class TrainingDriver:
    """Optimizer steps, accumulation and a run's cadence around a step function.

    Args:
        params: the trained parameters (clipped and measured).
        optimizer: their optimizer.
        scheduler: an LR scheduler stepped with the optimizer (None: fixed LR).
        cadence: when to log, evaluate and save.
        guard: the non-finite guard (skips or halts on a NaN/inf loss or gradient norm).
        accumulator: token-normalised accumulation (sums over data-parallel ranks when built
            with a reduction).
        max_grad_norm: clip the total gradient norm to this (None: only measure).
        grad_norm_group: a process group whose ranks hold other parameters (pipeline stages):
            the norm is taken over all of them (None: this rank's parameters are the model's).
        gradient_sync: ``enabled -> None``, e.g. an FSDP2 module's
            ``set_requires_gradient_sync``: called before each micro-batch so only the last one
            synchronises gradients. None for one process.
        save: ``step -> Any`` commits a checkpoint of ``step``.
        evaluate: ``step -> metrics | None`` runs an evaluation (its metrics are logged).
        should_stop: polled exactly once per step on every rank (a collective when
            distributed, e.g. ``tune.dist.StopSignalHandler.should_stop``).
        sink: where metrics are logged (None on ranks other than the first).
        progress: a progress bar (None: none).
        postfix: metric names shown on the progress bar.
        meter: measures step time, tokens/s and peak memory (None: a CPU/CUDA meter per
            ``device``).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        cadence: Cadence,
        guard: NonFiniteGuard | None = None,
        accumulator: GradientAccumulator | None = None,
        max_grad_norm: float | None = None,
        grad_norm_group: Any = None,
        gradient_sync: Callable[[bool], Any] | None = None,
        save: Callable[[int], Any] | None = None,
        evaluate: Callable[[int], Metrics | None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        sink: MetricSink | None = None,
        progress: ProgressBar | None = None,
        postfix: Sequence[str] = ("loss",),
        meter: ThroughputMeter | None = None,
    ) -> None:
        self.params = list(params)
        self.optimizer, self.scheduler, self.cadence = optimizer, scheduler, cadence
        self.guard = guard if guard is not None else NonFiniteGuard("skip")
        self.accumulator = accumulator if accumulator is not None else GradientAccumulator()
        self.max_grad_norm, self.gradient_sync = max_grad_norm, gradient_sync
        self.grad_norm_group = grad_norm_group
        # clipped but not counted in the norm (with grad_norm_group): copies of tied weights
        self.grad_norm_exclude: tuple[torch.nn.Parameter, ...] = ()
        self.step_applied = True  # whether the last optimizer_step stepped (not skipped)
        self.save, self.evaluate, self.should_stop = save, evaluate, should_stop
        self.sink, self.progress, self.postfix = sink, progress, tuple(postfix)
        self.meter = meter if meter is not None else ThroughputMeter()
        self._last: Metrics = {}

    # ---- one optimizer step ------------------------------------------------------------------
    def accumulate(
        self,
        micro_batches: Sequence[Any],
        loss_fn: Callable[[Any], TokenLoss | Tensor],
        count: Callable[[Any], Tensor | int],
    ) -> Metrics:
        """Forward and backward every micro-batch, scaled by the step's global count.

        Args:
            micro_batches: this rank's micro-batches of the step.
            loss_fn: ``micro_batch -> summed loss`` (a 0-d tensor or a ``TokenLoss``).
            count: ``micro_batch -> units its loss sums over`` (trained tokens, pairs, ...),
                taken for every micro-batch before the first backward.

        Returns:
            ``{"loss": global mean per unit, "num_tokens": global unit count}``.
        """
        self.accumulator.start_step([count(mb) for mb in micro_batches])
        last = len(micro_batches) - 1
        for i, mb in enumerate(micro_batches):
            if self.gradient_sync is not None:
                self.gradient_sync(i == last)
            self.accumulator.scale(loss_fn(mb)).backward()
        self._last = self.accumulator.finish_step()
        return dict(self._last)

    def optimizer_step(self, guard_step: int, loss: float | Tensor | None = None) -> Metrics:
        """Clip, then step the optimizer and schedule unless the step is non-finite.

        Args:
            guard_step: the optimizer step's index as the guard counts it (1-based).
            loss: the step's loss for the guard (default: the last ``accumulate``'s).

        Returns:
            ``{"grad_norm": total norm before clipping, "lr": the LR the step used}``;
            ``step_applied`` then says whether the optimizer stepped (False: skipped as
            non-finite).
        """
        if loss is None:
            loss = self._last.get("loss")
        grad_norm = clip_grad_norm(
            self.params, self.max_grad_norm, group=self.grad_norm_group,
            norm_exclude=self.grad_norm_exclude,
        )  # fmt: skip
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.step_applied = self.guard.step(
            self.optimizer, step=guard_step, loss=loss, grad_norm=grad_norm,
            scheduler=self.scheduler,
        )  # fmt: skip
        return {"grad_norm": float(grad_norm), "lr": lr}

    # ---- the run -----------------------------------------------------------------------------
    def _log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.sink is not None:
            self.sink.log(metrics, step)

    def _evaluate(self, step: int, result: RunResult) -> None:
        if self.evaluate is None:
            return
        values = self.evaluate(step)
        if values is not None:
            self._log(values, step)
            result.evaluation = values
            result.evaluations[step] = values

    def run(self, step_fn: Callable[[int], StepResult], start_step: int = 0) -> RunResult:
        """Run steps ``start_step + 1 .. total_steps``; evaluate, log and save on the cadence.

        Args:
            step_fn: ``step -> StepResult``: the step's forward/backward and optimizer step(s)
                (through ``accumulate`` and ``optimizer_step``); ``step`` is the number of
                steps completed before it.
            start_step: steps already completed (a resumed run's step).

        Returns:
            How the run ended. A stop signal commits the current step and returns early;
            otherwise the run ends with a final evaluation (unless one just ran) and a save.

        Raises:
            NothingTrainedError: every step of the run was skipped as non-finite.
        """
        cad, step = self.cadence, start_step
        result = RunResult(step=step)
        if cad.eval_before and step == 0:
            self._evaluate(0, result)
        try:
            while step < cad.total_steps:
                self.meter.start()
                out = step_fn(step)
                perf = self.meter.stop(out.tokens) if out.tokens else {}
                step += 1
                result.step, result.metrics = step, out.metrics
                if self.progress is not None:
                    self.progress.update(1)
                    self.progress.set_postfix(
                        **{k: f"{out.metrics[k]:.4f}" for k in self.postfix if k in out.metrics}
                    )
                if step % cad.log_every == 0 or step == cad.total_steps:
                    self._log({**out.metrics, **perf, **self.guard.metrics()}, step)
                if cad.eval_every and step % cad.eval_every == 0:
                    self._evaluate(step, result)
                stop = self.should_stop() if self.should_stop is not None else False
                periodic = bool(cad.save_every) and step % (cad.save_every or 1) == 0
                if (periodic and step < cad.total_steps) or stop:
                    if self.save is not None:
                        self.save(step)
                    if stop:
                        logger.warning("stop signal received: saved step %d, exiting", step)
                        result.stopped = True
                        return result
        finally:
            if self.progress is not None:
                self.progress.close()
        self.guard.check_trained()  # every step skipped as non-finite: fail, write nothing
        if not (cad.eval_every and step % cad.eval_every == 0):  # unless it just ran
            self._evaluate(step, result)
        if self.save is not None:
            self.save(step)
        return result
