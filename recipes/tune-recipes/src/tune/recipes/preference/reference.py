"""The reference log-probs of the preference recipe: a frozen model, or the policy's base."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

from torch import Tensor, nn

from tune.peft import disable_adapters
from tune.train.steps.preference import PreferenceObjective, ReferenceLogprobs, batch_logprobs


def reference_logprobs_fn(
    policy: nn.Module,
    reference: nn.Module | None,
    objective: PreferenceObjective,
    *,
    fused: bool,
    softcap: float | None = None,
) -> ReferenceLogprobs | None:
    """``batch -> [2B]`` reference log-probs for tune.train's preference step (None: not needed).

    Args:
        policy: the policy (with adapter layers when ``reference`` is None).
        reference: a frozen reference model (full tuning), or None: the policy with its adapters
            disabled, which is the base model.
        objective: the preference loss (whether it needs a reference, summed or averaged).
        fused: chunked projection from hidden states.
        softcap: final-logit soft-capping.
    """
    if not objective.needs_reference:
        return None
    net = policy if reference is None else reference

    def logprobs(batch: Mapping[str, Tensor]) -> Tensor:
        context = disable_adapters(policy) if reference is None else nullcontext()
        with context:
            return batch_logprobs(
                net, batch, average=objective.average, fused=fused, softcap=softcap
            )

    return logprobs
