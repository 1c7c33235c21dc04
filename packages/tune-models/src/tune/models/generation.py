"""Batched generation: left-padded prefill, then incremental decoding with a KV cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from tune.models.kv_cache import setup_kv_cache, teardown_kv_cache

logger = logging.getLogger(__name__)


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row from ``logits`` [B, V]; returns [B] int64.

    Args:
        logits: last-position logits.
        temperature: 0 for greedy (argmax); otherwise logits are divided by it and sampled.
        top_k: keep only the ``top_k`` most likely tokens.
        top_p: keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus).
        generator: random source for sampling.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Generate continuations for a batch of prompts of different lengths.

    Prompts are left-padded to a common length; the KV cache is attached for the call and
    removed afterwards. A row stops after emitting a stop token (kept in its output).

    Args:
        model: a native model (``forward(tokens, *, positions, attention_mask)``) with
            attention layers that accept a ``kv_cache``.
        prompts: token ids per row (each non-empty).
        max_new_tokens: most tokens generated per row.
        temperature: 0 for greedy decoding.
        top_k: sample among the ``top_k`` most likely tokens.
        top_p: nucleus sampling threshold.
        stop_tokens: token ids that end a row.
        pad_id: id used for left padding and for finished rows.
        seed: seeds a new generator (on the model's device) when ``generator`` is not given.
        generator: random source for sampling.

    Returns:
        The new tokens of each row (not including the prompt).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    B, L = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((B, L), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, L), dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        tokens[i, L - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[i, L - len(prompt) :] = 1
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, L): real tokens count from 0
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    setup_kv_cache(model, B, L + max_new_tokens)
    try:
        logits = model(tokens, positions=positions, attention_mask=mask)[:, -1]  # (B, V)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        out: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            next_token = sample_next_token(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
            out.append(next_token)
            done = done | torch.isin(next_token, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            logits = model(next_token[:, None], positions=positions, attention_mask=mask)[:, -1]
    finally:
        teardown_kv_cache(model)
        model.train(was_training)
    generated = torch.stack(out, dim=1).tolist()  # (B, steps)
    stop_set = set(stop_tokens)
    results = []
    for row in generated:
        kept: list[int] = []
        for token in row:
            kept.append(token)
            if token in stop_set:
                break
        results.append(kept)
    return results
