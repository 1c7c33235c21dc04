"""Mixture-of-experts feed-forward block with stacked experts and capacity-free dispatch.

Each token is scored against ``E`` experts by a linear router, the ``k`` best experts are
selected, and the token's output is the weighted sum of those experts' gated MLPs (plus an
optional shared expert that sees every token)::

    logits  = router(x)                                  # [N, E]
    scores  = softmax(logits) | sigmoid(logits)          # [N, E], float32
    chosen  = topk(scores + routing_bias, k)             # [N, k]; the bias only steers selection
    w       = scores[chosen]  (/ sum(w) if normalised) * routed_scale
    y       = sum_j w_j * expert_{chosen_j}(x) (+ [sigmoid(gate(x)) *] shared_expert(x))

Expert weights are stacked 3-D parameters, ``[E, out, in]`` like ``nn.Linear``:
``experts.gate_up_proj`` [E, 2 * hidden_dim, dim] holds the gate rows first, then the up rows
(one matmul per expert instead of two, the layout transformers 5 keeps for Qwen3-MoE, Qwen2-MoE,
Mixtral and OLMoE), and ``experts.down_proj`` [E, dim, hidden_dim]. gpt-oss adds a bias to the
router (``router.bias`` [E]) and to both expert projections (``experts.gate_up_proj_bias``
[E, 2 * hidden_dim], gate then up like the weight rows; ``experts.down_proj_bias`` [E, dim]) and
replaces ``act(gate) * up`` by its clamped SwiGLU (``glu="clamped_swiglu"``)::

    gate = min(gate, limit);  up = clamp(up, -limit, limit)
    h    = (up + 1) * gate * sigmoid(alpha * gate)

Dispatch is capacity-free (no token is dropped): the ``N * k`` (token, expert) pairs are sorted
by expert so every expert reads one contiguous slice. That slice runs through
``torch._grouped_mm`` (CUDA: bf16 with 16-byte aligned widths; CPU: fp32/bf16/fp16, a C++ loop over
the groups with no per-expert Python or autograd overhead) or else a Python loop over the slices;
``implementation="loop"`` is an independent per-expert reference kept for tests.

``block(x)`` returns the output; the router statistics of that call (for load-balancing losses
and expert-load metrics) are on ``block.router_stats`` until the next call, or returned directly
by ``block.forward_with_stats(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tune.models import grouped_linear as gl
from tune.models.gated_function import can_fuse_gated, packed_gated_hidden
from tune.models.grouped_linear import GradBuffers, grouped_linear, is_plain, reusable_grad
from tune.models.mlp import ACTIVATIONS

ExpertsImplementation = Literal["auto", "grouped_mm", "sorted", "loop"]
GluKind = Literal["gated", "clamped_swiglu"]
_IMPLEMENTATIONS = ("auto", "grouped_mm", "sorted", "loop")
_GLU_KINDS = ("gated", "clamped_swiglu")
_SCORE_FUNCS = ("softmax", "sigmoid")
GatedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clamped_swiglu(
    gate: torch.Tensor, up: torch.Tensor, alpha: float = 1.702, limit: float = 7.0
) -> torch.Tensor:
    """gpt-oss's expert activation ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)``
    with ``g = min(gate, limit)``; ``gate`` and ``up`` are [..., hidden_dim]."""
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(alpha * gate))


@dataclass(frozen=True)
class RouterStats:
    """What the router decided for one forward call (``N`` = tokens, ``E`` = experts).

    Attributes:
        logits: [N, E] router logits, in the input dtype, with gradient.
        scores: [N, E] float32 softmax or sigmoid of ``logits`` (the routing bias not added).
        selected_experts: [N, k] int64 expert index of each token's chosen slots.
        tokens_per_expert: [E] int64 number of (token, slot) pairs routed to each expert.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    selected_experts: torch.Tensor
    tokens_per_expert: torch.Tensor


def _grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor, hidden_dim: int) -> bool:
    if not hasattr(torch, "_grouped_mm") or x.dtype != weight.dtype:
        return False
    # Both kernels want rows whose strides are multiples of 16 bytes.
    if (x.shape[-1] * x.element_size()) % 16 or (hidden_dim * x.element_size()) % 16:
        return False
    if x.device.type == "cpu":  # torch 2.13 loops over the groups in C++ (fp32, bf16, fp16)
        if torch.compiler.is_compiling():  # but its meta function accepts bf16 only
            return x.dtype == torch.bfloat16
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    # The CUDA kernel wants bf16 operands (autocast does not cast them).
    return x.is_cuda and x.dtype == torch.bfloat16


def moe_experts_reference(
    x: torch.Tensor,
    selected_experts: torch.Tensor,
    weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    *,
    gate_up_bias: torch.Tensor | None = None,
    down_bias: torch.Tensor | None = None,
    gated: GatedFn | None = None,
) -> torch.Tensor:
    """Per-expert loop (reference): each expert gathers its tokens by mask and adds its output.

    Args:
        x: [N, dim] tokens.
        selected_experts: [N, k] expert indices.
        weights: [N, k] routing weights of those experts.
        gate_up_proj: [E, 2 * hidden_dim, dim] stacked gate and up rows.
        down_proj: [E, dim, hidden_dim].
        act: the gate activation (``act(gate) * up``).
        gate_up_bias: optional [E, 2 * hidden_dim] bias of the gate and up rows.
        down_bias: optional [E, dim] bias of the down projection.
        gated: ``(gate, up) -> hidden`` replacing ``act(gate) * up`` (e.g. ``clamped_swiglu``).

    Returns:
        [N, dim] the weighted sum of the selected experts' outputs.
    """
    out = torch.zeros_like(x)
    for expert in range(gate_up_proj.shape[0]):
        token_idx, slot = torch.where(selected_experts == expert)  # [n_e], [n_e]
        b1 = None if gate_up_bias is None else gate_up_bias[expert]
        b2 = None if down_bias is None else down_bias[expert]
        gate, up = F.linear(x[token_idx], gate_up_proj[expert], b1).chunk(2, dim=-1)
        h = act(gate) * up if gated is None else gated(gate, up)
        y = F.linear(h, down_proj[expert], b2)  # [n_e, dim]
        out = out.index_add(0, token_idx, y * weights[token_idx, slot, None])
    return out


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` [len(rows), dim]. On the CPU by ``index_select``: whole rows copied, and a
    backward (``index_add_``) that is sequential like ``x[rows]``'s, so equal bit for bit, but
    faster here at a 512-token Qwen3-MoE-shaped block's 4,096 rows (0.46 against 1.33 ms
    forward, 0.35 against 1.08 ms backward). On CUDA ``index_add_`` would add with atomics;
    ``x[rows]``'s backward sorts, so it stays deterministic."""
    return x.index_select(0, rows) if x.device.type == "cpu" else x[rows]


def sum_expert_rows(
    y_sorted: torch.Tensor,
    order: torch.Tensor,
    token_of_row: torch.Tensor,
    num_tokens: int,
    *,
    scatter: bool,
) -> torch.Tensor:
    """Sum each token's ``k`` expert rows -> [N, dim].

    Args:
        y_sorted: [N*k, dim] rows grouped by expert; row ``r`` is (token, slot) pair ``order[r]``.
        order: [N*k] int64 the pair of each row (``argsort`` of the flat expert choices).
        token_of_row: [N*k] int64 ``order // k``.
        num_tokens: ``N``.
        scatter: add the rows into place with ``scatter_add`` (sequential, so deterministic, on
            the CPU); else unsort them into [N, k, dim] with a gather and reduce over ``k`` (no
            atomics, as on CUDA). Neither keeps ``y_sorted`` for the backward, which
            ``index_add`` and ``index_copy`` would (their backward saves the source).
    """
    dim = y_sorted.shape[-1]
    if scatter:
        index = token_of_row.unsqueeze(1).expand(-1, dim)  # [N*k, dim], a view
        return y_sorted.new_zeros(num_tokens, dim).scatter_add_(0, index, y_sorted)
    positions = torch.arange(order.numel(), device=order.device)
    inverse = torch.empty_like(order).scatter_(0, order, positions)  # sorted row of each pair
    return y_sorted[inverse].view(num_tokens, -1, dim).sum(dim=1)


class GroupedExperts(nn.Module):
    """``E`` gated MLPs stored stacked, applied to tokens grouped by expert.

    Parameters: ``gate_up_proj`` [E, 2 * hidden_dim, dim] (gate rows, then up rows),
    ``down_proj`` [E, dim, hidden_dim] and, with ``bias``, ``gate_up_proj_bias``
    [E, 2 * hidden_dim] and ``down_proj_bias`` [E, dim].

    Args:
        dim: model width.
        hidden_dim: width of each expert's gated hidden layer.
        num_experts: number of experts ``E``.
        activation: one of ``tune.models.mlp.ACTIVATIONS`` (the gate's, for ``glu="gated"``).
        implementation: "auto" (``grouped_mm`` where usable, else ``sorted``; on CPU in fp32 the
            grouped path is usable), "grouped_mm"
            (``torch._grouped_mm`` on the sorted tokens), "sorted" (a loop over the sorted
            slices) or "loop" (``moe_experts_reference``). All give the same results.
        bias: add the expert biases (gpt-oss).
        glu: "gated" (``act(gate) * up``) or "clamped_swiglu" (gpt-oss, see ``clamped_swiglu``).
        swiglu_alpha: sigmoid gain of the clamped SwiGLU.
        swiglu_limit: its clamp.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        activation: str = "silu",
        implementation: ExpertsImplementation = "auto",
        *,
        bias: bool = False,
        glu: GluKind = "gated",
        swiglu_alpha: float = 1.702,
        swiglu_limit: float = 7.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unsupported expert activation {activation!r}; supported: {sorted(ACTIVATIONS)}"
            )
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"unsupported experts implementation {implementation!r}; "
                f"expected one of {_IMPLEMENTATIONS}"
            )
        if glu not in _GLU_KINDS:
            raise ValueError(f"unsupported experts glu {glu!r}; expected one of {_GLU_KINDS}")
        self.dim, self.hidden_dim, self.num_experts = dim, hidden_dim, num_experts
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.implementation: ExpertsImplementation = implementation
        self.glu: GluKind = glu
        self.swiglu_alpha, self.swiglu_limit = swiglu_alpha, swiglu_limit
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * hidden_dim, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.gate_up_proj_bias: nn.Parameter | None = None
        self.down_proj_bias: nn.Parameter | None = None
        if bias:
            self.gate_up_proj_bias = nn.Parameter(torch.empty(num_experts, 2 * hidden_dim))
            self.down_proj_bias = nn.Parameter(torch.empty(num_experts, dim))
        self._grad_buffers = GradBuffers()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init: normal(0, std) expert weights, zero biases."""
        nn.init.normal_(self.gate_up_proj, mean=0.0, std=std)
        nn.init.normal_(self.down_proj, mean=0.0, std=std)
        for bias in (self.gate_up_proj_bias, self.down_proj_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def _gated(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Gate and up [n, hidden_dim] each -> the hidden activations [n, hidden_dim]."""
        if self.glu == "clamped_swiglu":
            return clamped_swiglu(gate, up, self.swiglu_alpha, self.swiglu_limit)
        return self._act(gate) * up

    def _hidden(self, gate_up: torch.Tensor, w_sorted: torch.Tensor) -> torch.Tensor:
        """Gate-up rows [M, 2 * hidden_dim] and routing weights [M, 1] -> weighted hidden rows
        [M, hidden_dim]; eager training saves only the two inputs (``packed_gated_hidden``)."""
        if can_fuse_gated(gate_up, w_sorted):
            silu = self.glu == "gated" and self.activation == "silu"
            return packed_gated_hidden(gate_up, w_sorted, None if silu else self._gated)
        gate, up = gate_up.chunk(2, dim=-1)  # [M, hidden_dim] each
        return self._gated(gate, up) * w_sorted

    def forward(
        self,
        x: torch.Tensor,
        selected_experts: torch.Tensor,
        weights: torch.Tensor,
        tokens_per_expert: torch.Tensor,
    ) -> torch.Tensor:
        """Weighted sum of the selected experts' outputs.

        Args:
            x: [N, dim] tokens.
            selected_experts: [N, k] int64 expert indices.
            weights: [N, k] routing weights, in the dtype of ``x``.
            tokens_per_expert: [E] int64 counts of ``selected_experts`` per expert.

        Returns:
            [N, dim].
        """
        impl = self.implementation
        if impl == "loop":
            return moe_experts_reference(
                x,
                selected_experts,
                weights,
                self.gate_up_proj,
                self.down_proj,
                self._act,
                gate_up_bias=self.gate_up_proj_bias,
                down_bias=self.down_proj_bias,
                gated=self._gated,
            )
        if impl == "auto":
            usable = _grouped_mm_usable(x, self.gate_up_proj, self.hidden_dim)
            impl = "grouped_mm" if usable else "sorted"
        n, k = selected_experts.shape
        # Stable sort keeps each expert's tokens in token order (deterministic results).
        flat_experts = selected_experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)  # [N*k]
        token_of_row = order // k  # [N*k]
        w_sorted = weights.reshape(-1)[order].unsqueeze(-1)  # [N*k, 1]
        if impl == "grouped_mm" and self._fuse_gather_scatter(x, n * k):
            return self._gather_scatter(x, token_of_row, w_sorted, tokens_per_expert)
        x_sorted = _gather_rows(x, token_of_row)  # [N*k, dim], grouped by expert
        if impl == "grouped_mm":
            y_sorted = self._grouped_mm(x_sorted, tokens_per_expert, flat_experts[order], w_sorted)
        else:
            y_sorted = self._sorted_loop(x_sorted, tokens_per_expert) * w_sorted
        return sum_expert_rows(y_sorted, order, token_of_row, n, scatter=x.device.type == "cpu")

    def _grouped_mm(
        self,
        x_sorted: torch.Tensor,
        tokens_per_expert: torch.Tensor,
        sorted_experts: torch.Tensor,
        w_sorted: torch.Tensor,
    ) -> torch.Tensor:
        """Rows [N*k, dim] grouped by expert -> their experts' outputs times their routing
        weights ``w_sorted`` [N*k, 1] (applied to the hidden rows, which are narrower)."""
        offsets = torch.cumsum(tokens_per_expert, dim=0).to(torch.int32)  # [E] end of each group
        # Host counts for the CPU weight-gradient loops (no sync there); CUDA needs none.
        counts = tokens_per_expert.tolist() if x_sorted.device.type == "cpu" else None
        h = self._project(x_sorted, "gate_up_proj", offsets, counts)
        if self.gate_up_proj_bias is not None:  # row r belongs to expert sorted_experts[r]
            h = h + self.gate_up_proj_bias[sorted_experts]
        y = self._project(self._hidden(h, w_sorted), "down_proj", offsets, counts)
        if self.down_proj_bias is not None:
            y = y + w_sorted * self.down_proj_bias[sorted_experts]
        return y

    def _fuse_gather_scatter(self, x: torch.Tensor, rows: int) -> bool:
        """Whether the CPU path skips the [N*k, dim] gathered input and per-row output: when
        they are large enough that each would be a fresh mapping every step (see
        ``grouped_linear.FUSED_MIN_BYTES``), for plain weights without biases."""
        return (
            x.device.type == "cpu"
            and rows * self.dim * x.element_size() >= gl.FUSED_MIN_BYTES
            and self.gate_up_proj_bias is None
            and self.down_proj_bias is None
            and not torch.compiler.is_compiling()
            and is_plain(self.gate_up_proj)
            and is_plain(self.down_proj)
        )

    def _gather_scatter(
        self,
        x: torch.Tensor,
        token_of_row: torch.Tensor,
        w_sorted: torch.Tensor,
        tokens_per_expert: torch.Tensor,
    ) -> torch.Tensor:
        """The grouped path with the token gather and the sum over ``k`` inside the expert loops:
        ``x`` [N, dim] -> [N, dim]."""
        counts = tokens_per_expert.tolist()
        h = gl.gather_grouped_linear(
            x, self.gate_up_proj, token_of_row, counts, self._claim("gate_up_proj")
        )  # [N*k, 2 * hidden_dim]
        return gl.grouped_linear_scatter_add(
            self._hidden(h, w_sorted),
            self.down_proj,
            token_of_row,
            counts,
            x.shape[0],
            self._claim("down_proj"),
        )

    def _claim(self, name: str) -> torch.Tensor | None:
        weight = getattr(self, name)
        return self._grad_buffers.claim(name, weight) if reusable_grad(weight) else None

    def _project(
        self, rows: torch.Tensor, name: str, offsets: torch.Tensor, counts: list[int] | None
    ) -> torch.Tensor:
        """``rows`` [M, in] grouped by expert through the stacked weight ``name`` -> [M, out]."""
        weight = getattr(self, name)
        if counts is not None and reusable_grad(weight):  # CPU training: reuse last step's memory
            return grouped_linear(rows, weight, offsets, counts, self._claim(name))
        return torch._grouped_mm(rows, weight.transpose(-2, -1), offs=offsets)

    def _sorted_loop(self, x_sorted: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        counts = tokens_per_expert.tolist()  # one host sync (the CUDA grouped_mm path has none)
        # unbind, not indexing: the backward of E selects would write E zero-filled [E, out, in]
        # gradients (quadratic in E); unbind's backward stacks the E slices once.
        gate_up, down = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        no_bias: list[torch.Tensor | None] = [None] * self.num_experts
        b1 = no_bias if self.gate_up_proj_bias is None else self.gate_up_proj_bias.unbind(0)
        b2 = no_bias if self.down_proj_bias is None else self.down_proj_bias.unbind(0)
        outputs: list[torch.Tensor] = []
        for expert, chunk in enumerate(torch.split(x_sorted, counts)):
            if counts[expert] == 0 and (outputs or expert < self.num_experts - 1):
                continue  # (no token at all: the last expert runs on the empty input, so the
                # output stays in the graph of x and the weights)
            gate, up = F.linear(chunk, gate_up[expert], b1[expert]).chunk(2, dim=-1)
            outputs.append(F.linear(self._gated(gate, up), down[expert], b2[expert]))
        return torch.cat(outputs)


class MoEFeedForward(nn.Module):
    """Routed mixture of gated-MLP experts, with an optional shared expert.

    Module names (state-dict keys): ``router.weight`` [E, dim], ``experts.gate_up_proj``
    [E, 2 * hidden_dim, dim], ``experts.down_proj`` [E, dim, hidden_dim], ``shared_expert.*``
    (the module given), ``shared_expert_gate.weight`` [1, dim] and the buffer ``routing_bias`` [E];
    with ``router_bias`` ``router.bias`` [E], with ``expert_bias`` ``experts.gate_up_proj_bias``
    [E, 2 * hidden_dim] and ``experts.down_proj_bias`` [E, dim] (gpt-oss).

    Args:
        dim: model width.
        hidden_dim: width of each routed expert's gated hidden layer.
        num_experts: number of routed experts ``E``.
        top_k: experts per token ``k`` (1 <= k <= E).
        score_func: "softmax" (Qwen-MoE, Mixtral, OLMoE) or "sigmoid" (DeepSeek-V3) router scores.
        norm_topk_prob: divide the ``k`` chosen scores by their sum.
        routed_scale: factor on the routed weights (DeepSeek-V3's ``routed_scaling_factor``).
        routing_bias: keep a per-expert bias buffer ``routing_bias`` [E] (zeros) that is added to
            the scores for the choice of experts only, not to their weights (DeepSeek-V3's
            auxiliary-loss-free balancing; it is updated from outside, not by gradients).
        shared_expert: a module ``[N, dim] -> [N, dim]`` (e.g. ``GatedMLP``) applied to every token
            and added to the routed output.
        shared_expert_gate: scale the shared expert by ``sigmoid(Linear(dim, 1)(x))`` (Qwen2-MoE).
        num_groups: split the experts into this many equal groups for group-limited routing
            (DeepSeek-V3's ``n_group``); 1 = no groups.
        topk_groups: each token picks its experts only among its ``topk_groups`` best groups, a
            group's score being the sum of its two best (bias-corrected) expert scores
            (DeepSeek-V3's ``topk_group``).
        activation: expert gate activation, one of ``tune.models.mlp.ACTIVATIONS``.
        implementation: how the experts run, see ``GroupedExperts``.
        router_bias: a bias on the router's linear layer (gpt-oss).
        expert_bias: biases on the experts' projections (gpt-oss).
        glu: the experts' gated activation, "gated" or "clamped_swiglu" (gpt-oss).
        swiglu_alpha: sigmoid gain of the clamped SwiGLU.
        swiglu_limit: its clamp.

    gpt-oss's router (softmax over the top-k logits) is ``score_func="softmax"`` with
    ``norm_topk_prob=True``: ``exp(l_i) / sum_topk exp(l_j)`` either way.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int,
        *,
        score_func: Literal["softmax", "sigmoid"] = "softmax",
        norm_topk_prob: bool = True,
        routed_scale: float = 1.0,
        routing_bias: bool = False,
        shared_expert: nn.Module | None = None,
        shared_expert_gate: bool = False,
        num_groups: int = 1,
        topk_groups: int = 1,
        activation: str = "silu",
        implementation: ExpertsImplementation = "auto",
        router_bias: bool = False,
        expert_bias: bool = False,
        glu: GluKind = "gated",
        swiglu_alpha: float = 1.702,
        swiglu_limit: float = 7.0,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"MoE top_k={top_k} must be in [1, num_experts={num_experts}]")
        if score_func not in _SCORE_FUNCS:
            raise ValueError(
                f"unsupported MoE score_func {score_func!r}; expected one of {_SCORE_FUNCS}"
            )
        if shared_expert_gate and shared_expert is None:
            raise ValueError("MoE shared_expert_gate=True needs a shared_expert module")
        if num_groups < 1 or num_experts % num_groups:
            raise ValueError(f"MoE num_groups={num_groups} must divide num_experts={num_experts}")
        if num_groups > 1 and not (
            1 <= topk_groups <= num_groups and top_k <= topk_groups * (num_experts // num_groups)
        ):
            raise ValueError(
                f"MoE topk_groups={topk_groups} must be in [1, num_groups={num_groups}] and "
                f"leave at least top_k={top_k} experts to choose from"
            )
        if num_groups > 1 and num_experts // num_groups < 2:
            raise ValueError("MoE group-limited routing needs at least 2 experts per group")
        self.num_groups, self.topk_groups = num_groups, topk_groups
        self.num_experts, self.top_k = num_experts, top_k
        self.score_func = score_func
        self.norm_topk_prob = norm_topk_prob
        self.routed_scale = routed_scale
        self.router = nn.Linear(dim, num_experts, bias=router_bias)
        self.experts = GroupedExperts(
            dim,
            hidden_dim,
            num_experts,
            activation,
            implementation,
            bias=expert_bias,
            glu=glu,
            swiglu_alpha=swiglu_alpha,
            swiglu_limit=swiglu_limit,
        )
        self.shared_expert = shared_expert
        self.shared_expert_gate = nn.Linear(dim, 1, bias=False) if shared_expert_gate else None
        self.routing_bias: torch.Tensor | None
        if routing_bias:
            self.register_buffer("routing_bias", torch.zeros(num_experts, dtype=torch.float32))
        else:
            self.routing_bias = None
        self.router_stats: RouterStats | None = None

    def __getstate__(self) -> dict[str, object]:
        # The last call's stats hold graph tensors, which deepcopy and pickle refuse; a copy of
        # the block (a reference model, an EMA) starts without them.
        state = dict(super().__getstate__())
        state["router_stats"] = None
        return state

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """Choose experts for ``x`` [N, dim]; returns weights [N, k] (float32) and the stats."""
        logits = self.router(x)  # [N, E]
        if self.score_func == "softmax":
            scores = torch.softmax(logits.float(), dim=-1)
        else:
            scores = torch.sigmoid(logits.float())
        choose_by = scores if self.routing_bias is None else scores + self.routing_bias
        if self.num_groups > 1:
            choose_by = self._mask_to_best_groups(choose_by)
        selected = torch.topk(choose_by, self.top_k, dim=-1).indices  # [N, k]
        weights = scores.gather(-1, selected)  # [N, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.routed_scale != 1.0:
            weights = weights * self.routed_scale
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)
        counts = counts.scatter_add(0, selected.reshape(-1), torch.ones_like(selected.reshape(-1)))
        return weights, RouterStats(logits, scores, selected, counts)

    def _mask_to_best_groups(self, choose_by: torch.Tensor) -> torch.Tensor:
        """``choose_by`` [N, E] with the experts outside each token's best groups set to -inf."""
        n = choose_by.shape[0]
        grouped = choose_by.view(n, self.num_groups, -1)  # [N, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, G]
        best = torch.topk(group_scores, self.topk_groups, dim=-1).indices  # [N, topk_groups]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(n, -1)

    def forward_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """``x`` [B, T, dim] -> (output [B, T, dim], router stats over the B * T tokens)."""
        batch, seq, dim = x.shape
        flat = x.reshape(-1, dim)  # [N, dim]
        weights, stats = self.route(flat)
        out = self.experts(
            flat, stats.selected_experts, weights.to(x.dtype), stats.tokens_per_expert
        )
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)  # [N, dim]
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared
        return out.view(batch, seq, dim), stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, dim] -> [B, T, dim]; keeps this call's stats on ``self.router_stats``."""
        out, self.router_stats = self.forward_with_stats(x)
        return out
