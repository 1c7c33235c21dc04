"""Router losses and expert-load metrics inside the training steps of a MoE model.

``RouterObjective`` is handed to a step function (``micro_batch_loss``,
``micro_batch_preference``): after the model's forward it reads every MoE block's
``router_stats`` (``tune.train.losses.router_stats_of``), returns the penalty the step adds to
its loss, and sums the expert loads and the router-loss values over the step's micro-batches.
``finish_step`` reduces them over the data-parallel ranks (one all-reduce), returns the metrics
and applies the auxiliary-loss-free routing-bias update::

    router = RouterObjective(aux_loss_coef=0.001)
    metrics = driver.accumulate(mbs, lambda mb: micro_batch_loss(model, mb, fused=False,
                                                                router=router), count=...)
    metrics.update(router.finish_step(model, dp.reduce))

Scaling under token-normalised accumulation: the router losses are means over one
micro-batch's tokens. The step adds ``penalty * units`` to the micro-batch's *summed* loss
(``units``: its trained tokens for SFT, its pairs for preference losses), so after the
accumulator's ``1 / global units`` the step optimises ``mean loss + sum_m (units_m / units) *
penalty_m``: the unit-weighted mean of the micro-batches' penalties, exactly transformers'
``loss + router_aux_loss_coef * aux_loss`` for one micro-batch on one rank. The logged ``loss``
is this total; ``moe/aux_loss`` and ``moe/z_loss`` are the same unit-weighted means, unscaled.

A model without MoE blocks is left alone: the penalty is None and the metrics are empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tune.train.expert_load import expert_load_metrics, reduce_loads, update_routing_bias
from tune.train.losses.router import (
    load_balancing_loss,
    router_stats_of,
    router_z_loss,
    sequence_load_balancing_loss,
)

logger = logging.getLogger(__name__)

AuxLossKind = Literal["global", "sequence"]
AUX_LOSS_KINDS = ("global", "sequence")


def real_token_mask(batch: Mapping[str, Tensor]) -> Tensor | None:
    """[B, T] bool, True on real tokens: ``attention_mask`` (padded batches) without
    ``padding_mask`` (True on the tail padding of packs), or None when the batch has neither."""
    attention, padding = batch.get("attention_mask"), batch.get("padding_mask")
    if padding is None:
        return None if attention is None else attention.bool()
    real = ~padding.bool()
    return real if attention is None else real & attention.bool()


class RouterObjective:
    """Router losses per micro-batch, expert-load metrics and routing-bias updates per step.

    Args:
        aux_loss_coef: weight of the load-balancing loss (0: computed and logged, not trained).
        z_loss_coef: weight of the router z-loss (0: computed and logged, not trained).
        aux_loss: ``global`` (transformers' ``load_balancing_loss_func``: Mixtral, Qwen-MoE,
            OLMoE, gpt-oss) or ``sequence`` (DeepSeek-V3's sequence-wise loss).
        bias_update_rate: step size of the auxiliary-loss-free update of each block's
            ``routing_bias`` (0: off; DeepSeek-V3 uses 0.001).
        per_expert_metrics: also log every expert's load (``moe/layer{i}/expert{j}``).
    """

    def __init__(
        self,
        *,
        aux_loss_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        aux_loss: AuxLossKind = "global",
        bias_update_rate: float = 0.0,
        per_expert_metrics: bool = False,
    ) -> None:
        for key, value in (
            ("aux_loss_coef", aux_loss_coef),
            ("z_loss_coef", z_loss_coef),
            ("bias_update_rate", bias_update_rate),
        ):
            if not value >= 0:
                raise ValueError(f"RouterObjective {key}={value}: expected a number >= 0")
        if aux_loss not in AUX_LOSS_KINDS:
            raise ValueError(f"RouterObjective aux_loss={aux_loss!r}: expected {AUX_LOSS_KINDS}")
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.aux_loss: AuxLossKind = aux_loss
        self.bias_update_rate = bias_update_rate
        self.per_expert_metrics = per_expert_metrics
        self._warned = False
        self._reset()

    def _reset(self) -> None:
        self._loads: dict[str, Tensor] = {}
        self._sums: Tensor | None = None  # [3] float64: aux * units, z * units, units

    @property
    def trains_router(self) -> bool:
        """Whether a penalty is added to the loss (a coefficient is > 0)."""
        return self.aux_loss_coef > 0 or self.z_loss_coef > 0

    def penalty(
        self,
        model: nn.Module,
        *,
        units: Tensor | int,
        batch_size: int,
        attention_mask: Tensor | None = None,
    ) -> Tensor | None:
        """The router penalty of the model's last forward, and its loads and values recorded.

        Call once per micro-batch, right after the forward. Clears the blocks' ``router_stats``.

        Args:
            model: the model just run; its MoE blocks are found by ``router_stats``.
            units: the micro-batch's units of accumulation (trained tokens, pairs): the weight
                of its values in the step's ``moe/aux_loss`` and ``moe/z_loss``.
            batch_size: rows of the batch (``B``; the sequences of the sequence-wise loss).
            attention_mask: [B, T] (0 = padding, left out of losses and loads) or None; the steps
                pass ``real_token_mask(batch)``.

        Returns:
            0-d float32 ``aux_loss_coef * aux + z_loss_coef * z`` (a per-unit mean, with
            gradient), or None when no penalty is trained or the model has no MoE block.
        """
        found = router_stats_of(model, clear=True)
        if not found:
            return None
        stats = [s for _, s in found]
        mask = attention_mask
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.aux_loss_coef > 0):
            if self.aux_loss == "global":
                top_k = stats[0].selected_experts.shape[-1]
                aux = load_balancing_loss([s.logits for s in stats], top_k, mask)
            else:
                aux = sequence_load_balancing_loss(
                    [s.scores for s in stats], [s.selected_experts for s in stats], batch_size, mask
                )
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.z_loss_coef > 0):
            z = router_z_loss([s.logits for s in stats], mask)
        self._record(found, mask, units, aux.detach(), z.detach())
        if not self.trains_router:
            return None
        return self.aux_loss_coef * aux + self.z_loss_coef * z

    @torch.no_grad()
    def _record(
        self,
        found: list[tuple[str, Any]],
        mask: Tensor | None,
        units: Tensor | int,
        aux: Tensor,
        z: Tensor,
    ) -> None:
        for name, s in found:
            chosen: Tensor = s.selected_experts
            if mask is None:
                load = s.tokens_per_expert.to(torch.float64)
            else:
                num_experts = s.logits.shape[-1]
                k = chosen.shape[-1]
                weights = mask.reshape(-1, 1).to(device=chosen.device, dtype=torch.float64)
                load = torch.zeros(num_experts, dtype=torch.float64, device=chosen.device)
                load = load.scatter_add(0, chosen.reshape(-1), weights.expand(-1, k).reshape(-1))
            self._loads[name] = load if name not in self._loads else self._loads[name] + load
        u = torch.as_tensor(units, dtype=torch.float64, device=aux.device)
        sums = torch.stack([aux.double() * u, z.double() * u, u])
        self._sums = sums if self._sums is None else self._sums + sums

    def finish_step(
        self,
        model: nn.Module,
        reduce: Callable[[Tensor], Tensor] | None = None,
        *,
        update_bias: bool = True,
    ) -> dict[str, float]:
        """The step's router metrics, after the routing-bias update; resets for the next step.

        Args:
            model: the model (its blocks' ``routing_bias`` are updated when the rate is > 0).
            reduce: sums a tensor over the data-parallel ranks (None: one process).
            update_bias: False for a step the optimizer skipped (non-finite): the loads are
                reported but the routing bias stays as it was, like the weights.

        Returns:
            ``moe/aux_loss``, ``moe/z_loss`` (unit-weighted means) and ``expert_load_metrics``'
            keys; empty when no MoE block ran this step.
        """
        if self._sums is None:
            return {}
        names = list(self._loads)
        device = self._sums.device
        packed = {"__sums__": self._sums, **{n: self._loads[n].to(device) for n in names}}
        summed = reduce_loads(packed, reduce)  # one all-reduce for losses and loads
        sums = summed.pop("__sums__").tolist()
        self._reset()
        units = max(sums[2], 1.0)
        metrics = {"moe/aux_loss": sums[0] / units, "moe/z_loss": sums[1] / units}
        metrics.update(expert_load_metrics(summed, per_expert=self.per_expert_metrics))
        if self.bias_update_rate > 0 and update_bias:
            updated = update_routing_bias(model, summed, rate=self.bias_update_rate)
            if updated == 0 and not self._warned:
                self._warned = True
                logger.warning(
                    "bias_update_rate=%g but no MoE block has a routing_bias buffer",
                    self.bias_update_rate,
                )
        return metrics
