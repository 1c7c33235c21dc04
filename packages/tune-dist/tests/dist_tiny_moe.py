"""A tiny mixture-of-experts transformer following tune.models' MoE names, for the tests only.

``Experts`` follows the experts protocol of ``tune.dist.expert_parallel`` the way
``tune.models.GroupedExperts`` does (stacked ``gate_up_proj`` [E, 2H, D] and ``down_proj``
[E, D, H]; ``forward(x, selected_experts, weights, tokens_per_expert)``); ``MoE`` routes like
``tune.models.MoEFeedForward`` (softmax, top-k, normalised) and keeps ``router_stats``.
``add_expert_lora`` adapts the stacked weights the way tune-peft's expert LoRA lays them out
(factors at ``experts.param_lora.<param>.lora_A`` [E, r, in] / ``lora_B`` [E, out, r], the
owner's class swapped for one whose property returns ``W + s * B @ A`` inside its forward),
without importing tune-peft.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from dist_tiny_transformer import DIM, IGNORE, VOCAB, Attention, make_batches, summed_loss
from torch import nn

N_EXPERTS = 4
TOP_K = 2
EXPERT_HIDDEN = 32
AUX_COEF = 0.1

__all__ = ["IGNORE", "make_batches", "summed_loss"]


class Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_experts = N_EXPERTS
        self.gate_up_proj = nn.Parameter(torch.empty(N_EXPERTS, 2 * EXPERT_HIDDEN, DIM))
        self.down_proj = nn.Parameter(torch.empty(N_EXPERTS, DIM, EXPERT_HIDDEN))

    def forward(
        self,
        x: torch.Tensor,
        selected_experts: torch.Tensor,
        weights: torch.Tensor,
        tokens_per_expert: torch.Tensor,
    ) -> torch.Tensor:
        n, k = selected_experts.shape
        order = torch.argsort(selected_experts.flatten(), stable=True)  # [N*k]
        rows = x[order // k]  # [N*k, D] grouped by expert
        outs = []
        for e, chunk in enumerate(rows.split(tokens_per_expert.tolist())):
            gate, up = F.linear(chunk, self.gate_up_proj[e]).chunk(2, dim=-1)
            outs.append(F.linear(F.silu(gate) * up, self.down_proj[e]))
        y = torch.empty_like(rows).index_copy(0, order, torch.cat(outs)).view(n, k, -1)
        return (y * weights.unsqueeze(-1)).sum(dim=1)  # [N, D]


class MoE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(DIM, N_EXPERTS, bias=False)
        self.experts = Experts()
        self.router_stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # [N, D]
        scores = torch.softmax(self.router(flat).float(), dim=-1)  # [N, E]
        selected = scores.topk(TOP_K, dim=-1).indices  # [N, k]
        weights = scores.gather(-1, selected)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        counts = torch.bincount(selected.flatten(), minlength=N_EXPERTS)  # [E]
        self.router_stats = (scores, selected)
        return self.experts(flat, selected, weights.to(x.dtype), counts).view(B, T, D)


def load_balancing_loss(scores: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Switch/Mixtral ``E * sum_i f_i * P_i`` over this call's tokens (as tune.models')."""
    counts = torch.bincount(selected.flatten(), minlength=N_EXPERTS).to(scores.dtype)
    return N_EXPERTS * (counts / selected.shape[0] * scores.mean(dim=0)).sum()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(DIM, eps=1e-6)
        self.attn = Attention()
        self.mlp_norm = nn.RMSNorm(DIM, eps=1e-6)
        self.mlp = MoE()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyMoE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block() for i in range(2)})
        self.norm = nn.RMSNorm(DIM, eps=1e-6)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)  # (B, T, D)
        for layer in self.layers.values():
            h = layer(h)
        return self.output(self.norm(h))  # (B, T, V)

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss over the layers for the last forward's tokens."""
        losses = [load_balancing_loss(*b.mlp.router_stats) for b in self.layers.values()]
        return torch.stack(losses).mean()


LORA_RANK, LORA_SCALE = 4, 2.0


class StackedFactors(nn.Module):
    """Per-expert factors of one stacked weight [E, out, in]: A [E, r, in], B [E, out, r]."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.randn(N_EXPERTS, LORA_RANK, in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(N_EXPERTS, out_features, LORA_RANK) * 0.1)


def _adapted(name: str) -> property:
    def weight(self: nn.Module) -> torch.Tensor:
        base = self._parameters[name]
        assert base is not None
        if not self.__dict__.get("_adapting"):  # outside the forward: the Parameter (FSDP, DCP)
            return base
        f = self._modules["param_lora"]._modules[name]  # type: ignore[index]
        return torch.baddbmm(base, f.lora_B, f.lora_A, alpha=LORA_SCALE)  # [E, out, in]

    return property(weight)


class LoRAExperts(Experts):
    gate_up_proj = _adapted("gate_up_proj")  # type: ignore[assignment]
    down_proj = _adapted("down_proj")  # type: ignore[assignment]


def _adapting(flag: bool) -> Any:
    def hook(module: nn.Module, *args: Any) -> None:
        module.__dict__["_adapting"] = flag

    return hook


def add_expert_lora(model: TinyMoE) -> TinyMoE:
    """Freeze the stacked expert weights and adapt them with random (non-zero) factors."""
    for block in model.layers.values():
        experts = block.mlp.experts
        factors = {n: StackedFactors(*p.shape[1:]) for n, p in experts.named_parameters()}
        for p in experts.parameters():
            p.requires_grad_(False)
        experts.add_module("param_lora", nn.ModuleDict(factors))
        experts.register_forward_pre_hook(_adapting(True))
        experts.register_forward_hook(_adapting(False), always_call=True)
        experts.__class__ = LoRAExperts
    return model


def build_moe(seed: int = 0) -> TinyMoE:
    torch.manual_seed(seed)
    model = TinyMoE()
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.05 if p.dim() == 2 else 0.1)
        else:
            nn.init.uniform_(p, 0.5, 1.5)
    return model


def shard_loss(
    model: TinyMoE, batch: dict[str, torch.Tensor], rank: int, size: int, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy summed over shard ``rank`` / global count, its load-balancing loss)."""
    tokens, labels = batch["tokens"].chunk(size)[rank], batch["labels"].chunk(size)[rank]
    return summed_loss(model(tokens), labels) / count, model.aux_loss()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-5, weight_decay=0.01)


def train_moe_reference(
    model: TinyMoE, batches: list[dict[str, torch.Tensor]], dp_size: int
) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One process: each step runs the ``dp_size`` data shards in turn (the router's auxiliary
    loss is per shard, as on the ranks) and sums ``CE / global count + AUX_COEF * mean aux``.

    Returns (losses, final state dict, first step's gradients)."""
    opt = make_optimizer(model)
    losses = []
    grads: dict[str, torch.Tensor] = {}
    for batch in batches:
        count = (batch["labels"] != IGNORE).sum()
        total = torch.zeros(())
        for rank in range(dp_size):
            ce, aux = shard_loss(model, batch, rank, dp_size, count)
            total = total + ce + AUX_COEF * aux / dp_size
        total.backward()
        grads = grads or {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
        opt.step()
        opt.zero_grad()
        losses.append(total.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, grads
