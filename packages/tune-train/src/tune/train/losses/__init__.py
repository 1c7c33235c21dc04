"""Losses that return sums plus counts, so accumulation can normalise by the whole step, and
the router losses of mixture-of-experts models."""

from tune.train.losses.cross_entropy import (
    IGNORE_INDEX,
    TokenLoss,
    chunked_cross_entropy,
    cross_entropy,
    softcap_logits,
)
from tune.train.losses.distillation import kl_distillation_loss
from tune.train.losses.fused_linear_ce import fused_linear_cross_entropy
from tune.train.losses.logprobs import (
    sequence_logprobs,
    sequence_logprobs_from_hidden,
    token_logprobs,
)
from tune.train.losses.policy import PolicyLoss, group_advantages, k3_kl, policy_gradient_loss
from tune.train.losses.preference import (
    PreferenceLoss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    reference_free_dpo_loss,
    simpo_loss,
)
from tune.train.losses.router import (
    RouterStatsLike,
    load_balancing_loss,
    router_stats_of,
    router_z_loss,
    sequence_load_balancing_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "PolicyLoss",
    "PreferenceLoss",
    "RouterStatsLike",
    "TokenLoss",
    "chunked_cross_entropy",
    "cross_entropy",
    "dpo_loss",
    "fused_linear_cross_entropy",
    "group_advantages",
    "ipo_loss",
    "k3_kl",
    "kl_distillation_loss",
    "kto_loss",
    "kto_reference_point",
    "load_balancing_loss",
    "orpo_loss",
    "policy_gradient_loss",
    "reference_free_dpo_loss",
    "router_stats_of",
    "router_z_loss",
    "sequence_load_balancing_loss",
    "sequence_logprobs",
    "sequence_logprobs_from_hidden",
    "simpo_loss",
    "softcap_logits",
    "token_logprobs",
]
