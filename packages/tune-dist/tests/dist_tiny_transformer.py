"""A tiny decoder-only transformer following tune.models' module names, for the tests only.

Attention derives the local head count from the projection outputs (``view(B, T, -1, head_dim)``),
the convention that lets colwise-sharded q/k/v run ``n_heads / tp`` heads unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256
DIM = 64
N_HEADS = 4
N_KV_HEADS = 2
HIDDEN = 128
N_LAYERS = 2
SEQ = 16
IGNORE = -100


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` subclass (like tune-peft's) keeping ``weight`` and adding ``lora_A`` /
    ``lora_B`` inner layers (PEFT naming)."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.02)  # non-zero so both factors get gradients
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + self.scale * self.lora_B(self.lora_A(x))


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [B, h, T, hd] at positions [B, T] (theta 10000)."""
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)  # (hd/2,)
    angles = positions[:, None, :, None].float() * freqs  # (B, 1, T, hd/2)
    cos, sin = angles.cos().repeat(1, 1, 1, 2), angles.sin().repeat(1, 1, 1, 2)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """``attention_fn(q, k, v, mask, scale)`` (like tune.models') replaces the causal SDPA core."""

    def __init__(self, qk_norm: bool = False) -> None:
        super().__init__()
        self.attention_fn: Callable[..., torch.Tensor] | None = None
        self.head_dim = DIM // N_HEADS
        # Per-head norms (Qwen3-style): under TP they see only the local heads.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.q_proj = nn.Linear(DIM, N_HEADS * self.head_dim, bias=False)
        self.k_proj = nn.Linear(DIM, N_KV_HEADS * self.head_dim, bias=False)
        self.v_proj = nn.Linear(DIM, N_KV_HEADS * self.head_dim, bias=False)
        self.o_proj = nn.Linear(N_HEADS * self.head_dim, DIM, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)  # (B, T, h, hd)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # (B, T, kv, hd)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, kv, T, hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, h, T, hd), (B, kv, T, hd)
        if positions is not None:
            q, k = rotate(q, positions), rotate(k, positions)
        if self.attention_fn is not None:
            y = self.attention_fn(q, k, v, None, self.head_dim**-0.5)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(DIM, HIDDEN, bias=False)
        self.up_proj = nn.Linear(DIM, HIDDEN, bias=False)
        self.down_proj = nn.Linear(HIDDEN, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, qk_norm: bool = False) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(DIM, eps=1e-6)
        self.attn = Attention(qk_norm)
        self.mlp_norm = nn.RMSNorm(DIM, eps=1e-6)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions)
        return x + self.mlp(self.mlp_norm(x))


class TinyTransformer(nn.Module):
    """Runs as a pipeline stage too: hidden states in when ``tok_embeddings`` is None, out when
    ``output`` is None (tune.dist.pipeline's contract)."""

    def __init__(
        self, tie_embeddings: bool = False, qk_norm: bool = False, n_layers: int = N_LAYERS
    ) -> None:
        super().__init__()
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block(qk_norm) for i in range(n_layers)})
        self.norm: nn.Module | None = nn.RMSNorm(DIM, eps=1e-6)
        self.output: nn.Linear | None = nn.Linear(DIM, VOCAB, bias=False)
        if tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens  # (B, T, D)
        for layer in self.layers.values():
            h = layer(h) if positions is None else layer(h, positions)  # RoPE only with positions
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h  # (B, T, V) or (B, T, D)


def build_model(
    seed: int = 0,
    *,
    tie_embeddings: bool = False,
    lora: bool = False,
    qk_norm: bool = False,
    n_layers: int = N_LAYERS,
) -> TinyTransformer:
    """The test model with deterministic weights; ``lora`` freezes the base and adds adapters."""
    torch.manual_seed(seed)
    model = TinyTransformer(tie_embeddings=tie_embeddings, qk_norm=qk_norm, n_layers=n_layers)
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.05)
        else:  # norm weights away from 1 so their gradients matter
            nn.init.uniform_(p, 0.5, 1.5)
    if lora:  # colwise q/v and rowwise o/down projections get adapters
        model.requires_grad_(False)
        for layer in model.layers.values():
            layer.attn.q_proj = LoRALinear(layer.attn.q_proj)
            layer.attn.v_proj = LoRALinear(layer.attn.v_proj)
            layer.attn.o_proj = LoRALinear(layer.attn.o_proj)
            layer.mlp.down_proj = LoRALinear(layer.mlp.down_proj)
    return model


def make_batches(steps: int, batch: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """One global batch repeated ``steps`` times (so the loss must go down), with aligned labels
    and a different number of masked labels per row (ranks see different token counts)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, SEQ + 1), generator=g)
    labels = tokens[:, 1:].clone()
    for row in range(batch):
        labels[row, : 2 * row + 1] = IGNORE  # a masked "prompt" of varying length
    return [{"tokens": tokens[:, :-1].contiguous(), "labels": labels} for _ in range(steps)]


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over real target tokens (normalise by a global count)."""
    return F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # eps well above float32 gradient noise: with the default 1e-8, Adam's first steps are
    # ~sign(grad) and turn a 1e-9 difference in a near-zero gradient into a full lr-sized step.
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=1e-5, weight_decay=0.01
    )


def train_reference(
    model: nn.Module, batches: list[dict[str, torch.Tensor]]
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process training on the full global batches: (losses, final state dict)."""
    opt = make_optimizer(model)
    losses = []
    for batch in batches:
        count = (batch["labels"] != IGNORE).sum()
        loss = summed_loss(model(batch["tokens"]), batch["labels"]) / count
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}
