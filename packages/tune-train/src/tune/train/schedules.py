"""Learning-rate schedules as `LambdaLR` factories, plus the plain factor functions they use.

Conventions (step = number of `scheduler.step()` calls so far, starting at 0):

- warmup: factor `(step + 1) / (warmup_steps + 1)` for `step < warmup_steps`, so the first step
  trains with a small non-zero rate and the rate reaches the peak at `step == warmup_steps`;
- decay runs from `warmup_steps` (factor 1) to `total_steps` (factor `min_lr_ratio`) and stays
  at `min_lr_ratio` afterwards.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DecayShape = Literal["linear", "cosine", "sqrt"]


def _check(warmup_steps: int, total_steps: int | None, min_lr_ratio: float) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and total_steps < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / (warmup_steps + 1)


def _decay(progress: float, shape: str, min_lr_ratio: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        remaining = 1.0 - progress
    elif shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif shape == "sqrt":
        remaining = 1.0 - math.sqrt(progress)
    else:
        raise ValueError(f"decay shape must be 'linear', 'cosine' or 'sqrt', got {shape!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining


def warmup_decay_factor(
    step: int, *, warmup_steps: int, total_steps: int, shape: DecayShape, min_lr_ratio: float
) -> float:
    """LR multiplier at `step` for warmup followed by a decay to `min_lr_ratio` at `total_steps`.

    Args:
        step: scheduler step (0-based).
        warmup_steps: steps of linear warmup.
        total_steps: step at which the decay reaches `min_lr_ratio`.
        shape: `"linear"`, `"cosine"` (half period) or `"sqrt"`.
        min_lr_ratio: final multiplier.
    """
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    span = total_steps - warmup_steps
    progress = 1.0 if span == 0 else (step - warmup_steps) / span
    return _decay(progress, shape, min_lr_ratio)


def warmup_stable_decay_factor(
    step: int,
    *,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    shape: DecayShape,
    min_lr_ratio: float,
) -> float:
    """LR multiplier for warmup, a constant plateau, then a decay over `decay_steps`.

    Args:
        step: scheduler step (0-based).
        warmup_steps: steps of linear warmup.
        stable_steps: steps at the peak rate after warmup.
        decay_steps: steps of decay to `min_lr_ratio` after the plateau.
        shape: decay shape (`"linear"`, `"cosine"`, `"sqrt"`).
        min_lr_ratio: final multiplier.
    """
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    decay_start = warmup_steps + stable_steps
    if step < decay_start:
        return 1.0
    progress = 1.0 if decay_steps == 0 else (step - decay_start) / decay_steps
    return _decay(progress, shape, min_lr_ratio)


def linear_schedule_with_warmup(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then linear decay to `min_lr_ratio * lr` at `total_steps`.

    Args:
        optimizer: the optimizer whose groups' `lr` is the peak rate.
        warmup_steps: steps of linear warmup.
        total_steps: step at which the rate reaches its minimum.
        min_lr_ratio: final rate as a fraction of the peak.
    """
    _check(warmup_steps, total_steps, min_lr_ratio)
    factor = partial(
        warmup_decay_factor,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        shape="linear",
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)


def cosine_schedule_with_warmup(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then a half cosine down to `min_lr_ratio * lr` at `total_steps`.

    Args:
        optimizer: the optimizer whose groups' `lr` is the peak rate.
        warmup_steps: steps of linear warmup.
        total_steps: step at which the rate reaches its minimum.
        min_lr_ratio: final rate as a fraction of the peak.
    """
    _check(warmup_steps, total_steps, min_lr_ratio)
    factor = partial(
        warmup_decay_factor,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        shape="cosine",
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)


def _constant_factor(step: int, *, warmup_steps: int) -> float:
    return _warmup(step, warmup_steps) if step < warmup_steps else 1.0


def constant_schedule_with_warmup(optimizer: Optimizer, *, warmup_steps: int) -> LambdaLR:
    """Linear warmup, then the peak rate for ever.

    Args:
        optimizer: the optimizer whose groups' `lr` is the peak rate.
        warmup_steps: steps of linear warmup.
    """
    _check(warmup_steps, None, 0.0)
    return LambdaLR(optimizer, partial(_constant_factor, warmup_steps=warmup_steps))


def warmup_stable_decay_schedule(
    optimizer: Optimizer,
    *,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    decay_shape: DecayShape = "linear",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Warmup-stable-decay (WSD): linear warmup, a plateau at the peak, then a final decay.

    Args:
        optimizer: the optimizer whose groups' `lr` is the peak rate.
        warmup_steps: steps of linear warmup.
        stable_steps: steps at the peak after warmup.
        decay_steps: steps of decay after the plateau.
        decay_shape: `"linear"`, `"cosine"` or `"sqrt"`.
        min_lr_ratio: final rate as a fraction of the peak.
    """
    _check(warmup_steps, None, min_lr_ratio)
    if stable_steps < 0 or decay_steps < 0:
        raise ValueError(
            f"stable_steps and decay_steps must be >= 0, got {stable_steps}, {decay_steps}"
        )
    if decay_shape not in ("linear", "cosine", "sqrt"):
        raise ValueError(f"decay_shape must be 'linear', 'cosine' or 'sqrt', got {decay_shape!r}")
    factor = partial(
        warmup_stable_decay_factor,
        warmup_steps=warmup_steps,
        stable_steps=stable_steps,
        decay_steps=decay_steps,
        shape=decay_shape,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)
