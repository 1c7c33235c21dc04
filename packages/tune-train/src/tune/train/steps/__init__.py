"""Training steps: the loss of one micro-batch for each objective, and its evaluation.

Each function takes a model, a batch of tensors and plain settings, and returns losses a plain
PyTorch loop can ``backward()``; nothing here owns a loop, a device mesh or a checkpoint.

- ``token``: token cross-entropy (SFT, continued pre-training), plain or fused with the output
  projection.
- ``preference``: DPO, IPO, SimPO, ORPO, KTO and reference-free DPO on chosen+rejected rows in
  one forward, with the reference log-probs from a callable.
- ``distillation``: cross-entropy mixed with a forward, reverse or symmetric KL to a teacher.
- ``router``: a MoE model's router losses (added by the token and preference steps), expert-load
  metrics and routing-bias update (``RouterObjective``).
- ``grpo``: rollouts as a padded batch, group advantages and the clipped policy-gradient update
  (with sampling, rewards and rollout metrics, also in ``tune.train.rl``).
"""

from tune.train.steps.distillation import (
    DistillLoss,
    DistillLossSettings,
    distill_micro_batch_loss,
    evaluate_distillation,
    teacher_logits,
)
from tune.train.steps.grpo import (
    PolicyLossSettings,
    RolloutBatch,
    micro_batch_policy_loss,
    policy_backward,
    rollout_advantages,
    rollout_tensors,
    sampling_seed,
    with_logprobs,
)
from tune.train.steps.preference import (
    PREFERENCE_LOSSES,
    PreferenceObjective,
    ReferenceLogprobs,
    batch_logprobs,
    evaluate_preference,
    micro_batch_preference,
    preference_stats,
)
from tune.train.steps.router import RouterObjective
from tune.train.steps.token import evaluate_token_loss, micro_batch_loss

__all__ = [
    "PREFERENCE_LOSSES",
    "DistillLoss",
    "DistillLossSettings",
    "PolicyLossSettings",
    "PreferenceObjective",
    "ReferenceLogprobs",
    "RolloutBatch",
    "RouterObjective",
    "batch_logprobs",
    "distill_micro_batch_loss",
    "evaluate_distillation",
    "evaluate_preference",
    "evaluate_token_loss",
    "micro_batch_loss",
    "micro_batch_policy_loss",
    "micro_batch_preference",
    "policy_backward",
    "preference_stats",
    "rollout_advantages",
    "rollout_tensors",
    "sampling_seed",
    "teacher_logits",
    "with_logprobs",
]
