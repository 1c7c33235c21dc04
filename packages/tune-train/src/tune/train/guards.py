"""Guard against non-finite losses and gradients: skip the optimizer step (counted, capped) or halt."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

GuardPolicy = Literal["skip", "halt"]


class NonFiniteError(RuntimeError):
    """Raised when a non-finite loss or gradient norm stops training."""


class NothingTrainedError(NonFiniteError):
    """Raised by `NonFiniteGuard.check_trained` when every checked step was skipped."""


def _to_float(value: Tensor | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        full_tensor = getattr(value, "full_tensor", None)
        value = full_tensor() if callable(full_tensor) else value
        return float(value.detach().float().cpu())
    return float(value)


def _grad_norm(optimizer: Optimizer) -> Tensor:
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


class NonFiniteGuard:
    """Decides whether an optimizer step may run, given the step's loss and gradient norm.

    With policy `"skip"` a step whose loss or gradient norm is NaN/inf is not taken: the
    optimizer is not called (parameters and optimizer state, including Adam's step count, stay
    as they were), the gradients are zeroed and the skip is counted. More than `max_skipped`
    skipped steps in total raise `NonFiniteError`. With `"halt"` the first one raises.

    A short run can have every step skipped without reaching `max_skipped`; call
    `check_trained()` at the end of training (or read `all_skipped`) to make that an error rather
    than a silently unchanged model. The counters are part of `state_dict`, so they cover the
    whole run across resumes.

    Under data parallelism pass the loss and norm after reduction (the norm from
    `clip_grad_norm` is already global) so every rank takes the same decision.

    Args:
        policy: `"skip"` or `"halt"`.
        max_skipped: total skipped steps tolerated before halting (policy `"skip"`).
    """

    def __init__(self, policy: GuardPolicy = "skip", *, max_skipped: int = 10) -> None:
        if policy not in ("skip", "halt"):
            raise ValueError(f"policy must be 'skip' or 'halt', got {policy!r}")
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        self.policy = policy
        self.max_skipped = max_skipped
        self.skipped_steps = 0
        self.applied_steps = 0
        self.consecutive_skips = 0
        self.last_skipped_step: int | None = None
        self.last_non_finite: str | None = None

    def check(
        self, step: int, loss: Tensor | float | None, grad_norm: Tensor | float | None
    ) -> bool:
        """True if the step may be taken; False (counted) if it must be skipped.

        Args:
            step: the optimizer step index, used in messages and metrics.
            loss: the step's loss (any shape-0 value), or None to not check it.
            grad_norm: the total gradient norm, or None to not check it.

        Raises:
            NonFiniteError: policy `"halt"`, or more than `max_skipped` steps skipped.
        """
        loss_value, norm_value = _to_float(loss), _to_float(grad_norm)
        bad = [
            f"{name}={value}"
            for name, value in (("loss", loss_value), ("grad_norm", norm_value))
            if value is not None and not math.isfinite(value)
        ]
        if not bad:
            self.consecutive_skips = 0
            self.applied_steps += 1
            return True
        what = ", ".join(bad)
        self.last_non_finite = what
        if self.policy == "halt":
            raise NonFiniteError(
                f"non-finite {what} at step {step}; stopping (guard policy 'halt'). Lower the "
                "learning rate, check the data of this step, or use policy 'skip'."
            )
        self.skipped_steps += 1
        self.consecutive_skips += 1
        self.last_skipped_step = step
        if self.skipped_steps > self.max_skipped:
            raise NonFiniteError(
                f"non-finite {what} at step {step}: {self.skipped_steps} steps skipped in total, "
                f"more than max_skipped={self.max_skipped}; stopping."
            )
        logger.warning(
            "non-finite %s at step %d: optimizer step skipped (%d/%d skipped so far)",
            what,
            step,
            self.skipped_steps,
            self.max_skipped,
        )
        return False

    def step(
        self,
        optimizer: Optimizer,
        *,
        step: int,
        loss: Tensor | float | None,
        grad_norm: Tensor | float | None = None,
        scheduler: Any = None,
    ) -> bool:
        """Run `optimizer.step()` (and `scheduler.step()`) only if the step is finite; zero grads.

        Args:
            optimizer: the optimizer.
            step: the optimizer step index.
            loss: the step's loss.
            grad_norm: the total gradient norm; computed from the optimizer's parameters if None.
            scheduler: an LR scheduler stepped together with the optimizer (not on a skip).

        Returns:
            True if the optimizer stepped.
        """
        if grad_norm is None:
            grad_norm = _grad_norm(optimizer)
        ok = self.check(step, loss, grad_norm)
        if ok:
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return ok

    @property
    def checked_steps(self) -> int:
        """Steps decided so far (applied + skipped), over the whole run including resumes."""
        return self.applied_steps + self.skipped_steps

    @property
    def all_skipped(self) -> bool:
        """True when at least one step was checked and none was applied: nothing trained."""
        return self.checked_steps > 0 and self.applied_steps == 0

    def check_trained(self) -> None:
        """Raise if every checked step was skipped; call it once training ends.

        A run with no checked step (e.g. resumed at its last step) passes.

        Raises:
            NothingTrainedError: e.g. "every one of the 8 steps was skipped as non-finite
                (loss=nan): nothing was trained".
        """
        if self.all_skipped:
            raise NothingTrainedError(
                f"every one of the {self.skipped_steps} steps was skipped as non-finite "
                f"({self.last_non_finite}): nothing was trained. Check the data, the loss "
                "inputs and the learning rate; the model is unchanged."
            )

    def metrics(self) -> dict[str, int]:
        """`{"skipped_steps": total, "consecutive_skips": current run}` for the metric loggers."""
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def state_dict(self) -> dict[str, Any]:
        """Counters to save with the training state (all of them, so resumes keep the totals)."""
        return {
            "skipped_steps": self.skipped_steps,
            "applied_steps": self.applied_steps,
            "consecutive_skips": self.consecutive_skips,
            "last_skipped_step": self.last_skipped_step,
            "last_non_finite": self.last_non_finite,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by `state_dict` (keys added later default to 0 / None)."""
        self.skipped_steps = int(state["skipped_steps"])
        self.applied_steps = int(state.get("applied_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        self.last_skipped_step = state.get("last_skipped_step")
        self.last_non_finite = state.get("last_non_finite")
