"""One preference micro-batch: policy and reference log-probs, the loss, and reward statistics.

A batch holds 2B sequences in one tensor (``tune.data.collate_preference``): rows 0..B-1 are the
chosen responses, rows B..2B-1 the rejected ones (for KTO: the B examples, then the same prompts
with mismatched completions for the KL reference point). Policy log-probs come from ONE forward
over all 2B rows. The reference log-probs come from a callable (``batch -> [2B]``), so the
reference may be a frozen copy, the policy with its adapters disabled, or precomputed values::

    objective = PreferenceObjective("dpo", beta=0.1)
    reference = lambda b: batch_logprobs(frozen, b, average=objective.average, fused=False)
    result = micro_batch_preference(policy, batch, objective, reference=reference, fused=False)
    result.losses.mean().backward()

``model`` follows tune's model convention: ``model(tokens, positions=..., attention_mask=...)``
returns logits [N, T, V]; with ``fused`` it is called with ``return_hidden=True`` and its
``output`` linear layer projects the hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from tune.train.losses import (
    PreferenceLoss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    reference_free_dpo_loss,
    sequence_logprobs,
    sequence_logprobs_from_hidden,
    simpo_loss,
)
from tune.train.steps.router import RouterObjective, real_token_mask

PREFERENCE_LOSSES = ("dpo", "ipo", "simpo", "orpo", "kto", "reference_free_dpo")
# Losses on length-averaged log-probs (the others sum them).
AVERAGED_LOSSES = ("ipo", "simpo", "orpo")
STAT_KEYS = ("loss", "count", "chosen", "chosen_n", "rejected", "rejected_n", "correct")


@dataclass(frozen=True)
class PreferenceObjective:
    """A preference loss and its constants (see ``tune.train``'s losses for the formulas).

    Args:
        name: one of ``PREFERENCE_LOSSES``.
        beta: DPO / reference-free DPO / KTO inverse temperature.
        label_smoothing: DPO's conservative smoothing.
        tau: IPO's regularisation.
        simpo_beta: SimPO's reward scale.
        simpo_gamma: SimPO's target margin.
        orpo_lambda: ORPO's odds-ratio weight.
        desirable_weight: KTO's weight of desirable examples.
        undesirable_weight: KTO's weight of undesirable examples.
    """

    name: str
    beta: float = 0.1
    label_smoothing: float = 0.0
    tau: float = 0.1
    simpo_beta: float = 2.0
    simpo_gamma: float = 1.0
    orpo_lambda: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in PREFERENCE_LOSSES:
            raise ValueError(f"preference loss {self.name!r}: expected one of {PREFERENCE_LOSSES}")

    @property
    def needs_reference(self) -> bool:
        """Whether the loss compares the policy with a reference model."""
        return self.name in ("dpo", "ipo", "kto")

    @property
    def average(self) -> bool:
        """Whether the loss takes length-averaged (not summed) log-probs."""
        return self.name in AVERAGED_LOSSES

    def loss(
        self, policy: Tensor, reference: Tensor | None, desirable: Tensor | None = None
    ) -> PreferenceLoss:
        """Per-pair (KTO: per-example) losses and rewards from [2B] per-sequence log-probs.

        Args:
            policy: [2B] policy log-probs (chosen rows first).
            reference: [2B] reference log-probs (losses with a reference), else None.
            desirable: [B] bool, KTO only.
        """
        half = policy.shape[0] // 2
        pc, pr = policy[:half], policy[half:]
        if self.needs_reference:
            if reference is None:
                raise ValueError(f"loss {self.name!r} needs reference log-probs")
            rc, rr = reference[:half], reference[half:]
        if self.name == "dpo":
            return dpo_loss(pc, pr, rc, rr, beta=self.beta, label_smoothing=self.label_smoothing)
        if self.name == "ipo":
            return ipo_loss(pc, pr, rc, rr, tau=self.tau)
        if self.name == "simpo":
            return simpo_loss(pc, pr, beta=self.simpo_beta, gamma=self.simpo_gamma)
        if self.name == "orpo":
            return orpo_loss(pc, pr, lambda_=self.orpo_lambda)
        if self.name == "reference_free_dpo":
            return reference_free_dpo_loss(pc, pr, beta=self.beta)
        if desirable is None:
            raise ValueError("loss 'kto' needs the batch's 'desirable' flags (unpaired data)")
        # The second half holds prompt i with a mismatched completion: z0's KL estimate.
        z0 = kto_reference_point(pr, rr)
        return kto_loss(
            pc, rc, desirable, z0, beta=self.beta,
            desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight,
        )  # fmt: skip


def _model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: batch[k] for k in ("positions", "attention_mask") if k in batch}


def batch_logprobs(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    average: bool,
    fused: bool,
    softcap: float | None = None,
) -> Tensor:
    """Per-sequence log-probs of every row of ``batch`` from one forward.

    Args:
        model: a tune model.
        batch: ``tokens``, ``labels`` (-100 ignored), ``positions``, ``attention_mask``, [N, T].
        average: length-average instead of sum.
        fused: project hidden states in chunks (no [N, T, V] logits tensor).
        softcap: final-logit soft-capping, applied inside the fused path.

    Returns:
        [N] float32 log-probabilities.
    """
    if fused:
        hidden = model(batch["tokens"], **_model_inputs(batch), return_hidden=True)  # [N, T, D]
        weight = cast(nn.Linear, model.output).weight  # [V, D]
        return sequence_logprobs_from_hidden(
            hidden, weight, batch["labels"], average=average, softcap=softcap
        )
    logits = model(batch["tokens"], **_model_inputs(batch))  # [N, T, V], already soft-capped
    return sequence_logprobs(logits, batch["labels"], average=average)


ReferenceLogprobs = Callable[[Mapping[str, Tensor]], Tensor]
"""A batch (as for ``batch_logprobs``) -> [N] reference log-probs, computed without gradients."""


def micro_batch_preference(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    objective: PreferenceObjective,
    *,
    reference: ReferenceLogprobs | None,
    fused: bool,
    softcap: float | None = None,
    router: RouterObjective | None = None,
) -> PreferenceLoss:
    """The objective's per-pair losses and rewards on one concatenated micro-batch.

    Args:
        model: the policy.
        batch: 2B rows, chosen first (see the module docstring); ``desirable`` [B] for KTO.
        objective: the loss.
        reference: the reference log-probs of a batch (losses with a reference); None for
            reference-free losses.
        fused: chunked projection from hidden states.
        softcap: final-logit soft-capping.
        router: a MoE policy's router losses and load metrics (``RouterObjective``): its
            penalty (from the policy's forward over all 2B rows) is added to every pair's loss.
    """
    ref = None
    if objective.needs_reference:
        if reference is None:
            raise ValueError(f"preference loss {objective.name!r} needs a reference callable")
        with torch.no_grad():
            ref = reference(batch)
    policy = batch_logprobs(model, batch, average=objective.average, fused=fused, softcap=softcap)
    result = objective.loss(policy, ref, batch.get("desirable"))
    if router is not None:
        penalty = router.penalty(
            model, units=result.losses.shape[0], batch_size=batch["tokens"].shape[0],
            attention_mask=real_token_mask(batch),
        )  # fmt: skip
        if penalty is not None:
            result = result._replace(losses=result.losses + penalty)
    return result


def preference_stats(result: PreferenceLoss, desirable: Tensor | None = None) -> dict[str, Tensor]:
    """Sums over one micro-batch, to add up over micro-batches and ranks (see ``STAT_KEYS``).

    Args:
        result: the micro-batch's losses and rewards ([B] each).
        desirable: [B] bool KTO flags (None: paired data).
    """
    losses = result.losses.detach().double()
    chosen, rejected = result.chosen_rewards.double(), result.rejected_rewards.double()
    if desirable is None:
        chosen_n = rejected_n = torch.tensor(float(losses.shape[0]), dtype=torch.float64)
        correct = (chosen > rejected).double().sum()
    else:
        chosen_n = desirable.double().sum()
        rejected_n = (~desirable).double().sum()
        # KTO's reward is the policy/reference log-ratio: right when its sign matches the label.
        reward = torch.where(desirable, chosen, rejected)
        correct = ((reward > 0) == desirable).double().sum()
    count = torch.tensor(float(losses.shape[0]), dtype=torch.float64)
    values = (losses.sum(), count, chosen.sum(), chosen_n, rejected.sum(), rejected_n, correct)
    return {k: v.to(losses.device) for k, v in zip(STAT_KEYS, values, strict=True)}


def add_stats(total: dict[str, Tensor] | None, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """Element-wise sum of two ``preference_stats`` dicts (``total`` may be None)."""
    return dict(stats) if total is None else {k: total[k] + stats[k] for k in STAT_KEYS}


def summarize_stats(
    stats: dict[str, Tensor], reduce: Callable[[Tensor], Tensor] | None = None, prefix: str = ""
) -> dict[str, float]:
    """Means of the summed statistics (summed over ranks first with ``reduce``).

    Returns:
        ``loss``, ``reward_chosen``, ``reward_rejected``, ``reward_margin`` and ``accuracy``
        (fraction of pairs whose chosen reward beats the rejected one; KTO: of examples whose
        reward sign matches the label), each with ``prefix``.
    """
    packed = torch.stack([stats[k] for k in STAT_KEYS])
    if reduce is not None:
        packed = reduce(packed)
    v = dict(zip(STAT_KEYS, packed.tolist(), strict=True))
    chosen = v["chosen"] / max(v["chosen_n"], 1.0)
    rejected = v["rejected"] / max(v["rejected_n"], 1.0)
    out = {
        "loss": v["loss"] / max(v["count"], 1.0),
        "reward_chosen": chosen,
        "reward_rejected": rejected,
        "reward_margin": chosen - rejected,
        "accuracy": v["correct"] / max(v["count"], 1.0),
    }
    return {f"{prefix}{k}": value for k, value in out.items()}


@torch.no_grad()
def evaluate_preference(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    objective: PreferenceObjective,
    *,
    reference: ReferenceLogprobs | None,
    fused: bool,
    softcap: float | None = None,
    max_batches: int | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Loss, rewards and preference accuracy over held-out batches, prefixed ``val_``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total: dict[str, Tensor] | None = None
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        result = micro_batch_preference(
            model, batch, objective, reference=reference, fused=fused, softcap=softcap
        )
        total = add_stats(total, preference_stats(result, batch.get("desirable")))
    model.train(was_training)
    if total is None:
        total = {k: torch.zeros((), dtype=torch.float64, device=device) for k in STAT_KEYS}
    return summarize_stats(total, reduce, prefix="val_")
