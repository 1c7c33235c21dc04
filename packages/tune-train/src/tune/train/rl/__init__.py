"""GRPO / RL from verifiable rewards as library calls: everything between a prompt batch and an
optimizer step, with the generator passed in.

- ``backend``: ``SamplingSettings``, the ``GenerationBackend`` protocol (``generate(prompts,
  sampling, seed)`` and ``sync_weights(model)``), ``PolicyGenerationBackend`` (decodes with the
  live policy through a ``GenerateFunction`` such as ``tune.models.generate``), ``cut_at_stop``.
- ``rewards``: ``RewardInputs``, the ``RewardFunction`` protocol, the bundled ``exact_answer``,
  ``answer_format`` and ``length_penalty``, ``weighted_reward`` and ``score_completions``.
- ``rollouts``: ``sample_and_score`` (G completions per prompt, rewards, group advantages, the
  padded training batch), ``rollout_metrics``, ``held_out_accuracy``, ``prompt_rows``.
- the policy update (from ``tune.train.steps.grpo`` and ``tune.train.losses``): ``RolloutBatch``,
  ``PolicyLossSettings``, ``sampling_seed``, ``batched_logprobs`` (old / reference log-probs),
  ``with_logprobs``, ``policy_backward``, ``group_advantages``, ``policy_gradient_loss``.
"""

from tune.train.losses import group_advantages, k3_kl, policy_gradient_loss
from tune.train.rl.backend import (
    DecodeCopyBackend,
    GenerateFunction,
    GenerationBackend,
    PolicyGenerationBackend,
    SamplingSettings,
    cut_at_stop,
)
from tune.train.rl.rewards import (
    DEFAULT_ANSWER_PATTERN,
    RewardFunction,
    RewardInputs,
    WeightedReward,
    answer_format,
    exact_answer,
    final_integer,
    length_penalty,
    score_completions,
    weighted_reward,
)
from tune.train.rl.rollouts import (
    Reduce,
    ScoredRollouts,
    TextDecoder,
    held_out_accuracy,
    prompt_rows,
    rollout_metrics,
    rollout_throughput,
    sample_and_score,
    update_metrics,
)
from tune.train.steps.grpo import (
    PolicyLossSettings,
    RolloutBatch,
    batched_logprobs,
    completion_logprobs,
    micro_batch_policy_loss,
    policy_backward,
    rollout_advantages,
    rollout_tensors,
    sampling_seed,
    with_logprobs,
)

__all__ = [
    "DEFAULT_ANSWER_PATTERN",
    "DecodeCopyBackend",
    "GenerateFunction",
    "GenerationBackend",
    "PolicyGenerationBackend",
    "PolicyLossSettings",
    "Reduce",
    "RewardFunction",
    "RewardInputs",
    "RolloutBatch",
    "SamplingSettings",
    "ScoredRollouts",
    "TextDecoder",
    "WeightedReward",
    "answer_format",
    "batched_logprobs",
    "completion_logprobs",
    "cut_at_stop",
    "exact_answer",
    "final_integer",
    "group_advantages",
    "held_out_accuracy",
    "k3_kl",
    "length_penalty",
    "micro_batch_policy_loss",
    "policy_backward",
    "policy_gradient_loss",
    "prompt_rows",
    "rollout_advantages",
    "rollout_metrics",
    "rollout_tensors",
    "rollout_throughput",
    "sample_and_score",
    "sampling_seed",
    "score_completions",
    "update_metrics",
    "weighted_reward",
    "with_logprobs",
]
