"""Context parallelism: a causal sequence split over ranks, attention by a ring of K/V blocks.

Load balance (zig-zag): a sequence of T tokens is cut into ``2 * cp`` chunks of ``T / (2 * cp)``;
rank r holds chunks ``r`` and ``2 * cp - 1 - r``, so every rank holds one early and one late
chunk and does the same amount of causal attention work. ``zigzag_shard`` cuts any [B, T, ...]
tensor (tokens, labels, RoPE positions, document ids) that way; ``zigzag_unshard`` undoes it.

Ring attention: each rank keeps its queries and passes its keys/values around the ring
(``cp - 1`` send/recv steps). Per pair of (query chunk, key chunk) only the visible part is
computed with the CPU/GPU flash kernel, which also returns the log-sum-exp ``lse`` of each query
row; partial outputs merge exactly as::

    lse = logaddexp(lse_1, lse_2)
    out = exp(lse_1 - lse) * out_1 + exp(lse_2 - lse) * out_2

Causality uses global token indices (chunk order), not the RoPE positions (which restart per
packed document); packed documents mask by their global document ids. The backward is a custom
``autograd.Function`` with a second ring: the flash backward kernel, given the *merged* ``out`` and
``lse``, returns each block's exact share of dq/dk/dv; dk/dv accumulators travel with their K/V
block and arrive back at its owner after ``cp`` steps. Saved per rank: local q, k, v, out, lse
(activation memory O(T / cp)).

Use with a model whose attention modules have an ``attention_fn`` attribute (tune.models'
``Attention`` and ``MLAttention``): ``context_parallel_attention(model, group)`` routes their
attention core through ``ring_attention`` for the duration of a forward/backward. The model gets
the local shard of tokens and its RoPE positions, and no ``document_ids`` (the ring masks)::

    tokens, positions, labels = (zigzag_shard(t, cp, rank) for t in (tokens, positions, labels))
    with context_parallel_attention(model, group, document_ids=document_ids):
        loss_sum = loss_fn(model(tokens, positions=positions), labels)  # summed over tokens
        (loss_sum / global_token_count).backward()
    # then sum the gradients over the CP group: all_reduce, or FSDP2 over the same ranks (which
    # averages: multiply the loss by cp). ``global_token_count``: count_target_tokens(labels, group).

Not covered: sliding-window, soft-capped or sink attention (they need a mask; refused), a KV
cache, CP combined with tensor parallelism. torch's own ``context_parallel`` covers CUDA SDPA with
``is_causal`` only (no document masks, no CPU kernel), so this module carries its own ring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _check_divisible(length: int, cp_size: int, what: str) -> None:
    if cp_size < 1 or length % (2 * cp_size):
        raise ValueError(
            f"{what} length {length} must be a multiple of 2 * cp_size = {2 * cp_size} "
            "(zig-zag context parallelism cuts it into 2 * cp_size equal chunks)"
        )


def zigzag_chunks(cp_size: int, rank: int) -> tuple[int, int]:
    """The two chunk indices (of ``2 * cp_size``) that ``rank`` holds: ``rank`` and its mirror."""
    if not 0 <= rank < cp_size:
        raise ValueError(f"rank {rank} is outside the context-parallel group of {cp_size}")
    return rank, 2 * cp_size - 1 - rank


def zigzag_indices(seq_len: int, cp_size: int, rank: int, device: Any = None) -> torch.Tensor:
    """Global token indices [seq_len / cp_size] (int64) of ``rank``'s zig-zag shard, in order."""
    _check_divisible(seq_len, cp_size, "sequence")
    chunk = seq_len // (2 * cp_size)
    first, second = zigzag_chunks(cp_size, rank)
    idx = torch.arange(chunk, device=device)
    return torch.cat([idx + first * chunk, idx + second * chunk])


def zigzag_shard(x: torch.Tensor, cp_size: int, rank: int, dim: int = 1) -> torch.Tensor:
    """``rank``'s zig-zag share of ``x`` along ``dim`` (default T of [B, T, ...]).

    Args:
        x: any tensor whose ``dim`` has length T, a multiple of ``2 * cp_size``.
        cp_size: ranks in the context-parallel group.
        rank: this rank's index in that group.
    """
    _check_divisible(x.shape[dim], cp_size, f"tensor dim {dim}")
    chunks = x.chunk(2 * cp_size, dim=dim)
    first, second = zigzag_chunks(cp_size, rank)
    return torch.cat([chunks[first], chunks[second]], dim=dim)


def zigzag_unshard(shards: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The full tensor from every rank's zig-zag shard (``shards[r]`` from rank r), along ``dim``."""
    cp_size = len(shards)
    pieces: list[torch.Tensor | None] = [None] * (2 * cp_size)
    for rank, shard in enumerate(shards):
        first, second = zigzag_chunks(cp_size, rank)
        pieces[first], pieces[second] = shard.chunk(2, dim=dim)
    return torch.cat([p for p in pieces if p is not None], dim=dim)


def _acc(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype (the flash kernel's log-sum-exp dtype): float64 for float64, else
    float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scores(
    q: torch.Tensor, k: torch.Tensor, causal: bool, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Masked logits (accumulation dtype) [B, H, t, s] of one block (the explicit path off CPU)."""
    acc = _acc(q)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias.to(acc)
    if causal:
        t, s = scores.shape[-2:]
        keep = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores


def _block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    bias: torch.Tensor | None,
    scale: float,
    explicit: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one block: (out [B, H, t, D], lse [B, H, t] (float32, or float64 for float64), -inf where a row sees
    no key). The CPU flash kernel returns the log-sum-exp; elsewhere an explicit softmax (CUDA's
    kernels pad or omit it), correct on any device; ``explicit`` forces either."""
    if explicit if explicit is not None else q.device.type != "cpu":
        scores = _scores(q, k, causal, bias, scale)
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, t)
        probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)  # unseen rows: 0
        return torch.matmul(probs, v.to(probs.dtype)).to(q.dtype), lse
    out, lse = _flash(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
    if bias is not None:  # the kernel reports lse 0 for fully masked rows
        seen = (bias > float("-inf")).any(dim=-1)  # (B, 1, t)
        lse = lse.masked_fill(~seen, float("-inf"))
    return out, lse.to(_acc(q))


def _block_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    bias: torch.Tensor | None,
    scale: float,
    explicit: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's share of (dq, dk, dv), given the *merged* output and log-sum-exp of its rows
    (then ``probs = exp(scores - lse)`` are the block's columns of the full softmax)."""
    if explicit if explicit is not None else q.device.type != "cpu":
        probs = torch.exp(_scores(q, k, causal, bias, scale) - lse[..., None])  # (B, H, t, s)
        acc = probs.dtype
        g = grad_out.to(acc)
        dv = torch.matmul(probs.transpose(-2, -1), g)
        dp = torch.matmul(g, v.to(acc).transpose(-2, -1))
        delta = (g * out.to(acc)).sum(dim=-1, keepdim=True)  # (B, H, t, 1)
        ds = probs * (dp - delta) * scale
        return torch.matmul(ds, k.to(acc)), torch.matmul(ds.transpose(-2, -1), q.to(acc)), dv
    dq, dk, dv = _flash_backward(
        grad_out, q, k, v, out, lse, 0.0, causal, attn_mask=bias, scale=scale
    )
    return dq, dk, dv


def _doc_bias(
    q_docs: torch.Tensor | None, k_docs: torch.Tensor | None, causal: bool, dtype: torch.dtype
) -> tuple[torch.Tensor | None, bool]:
    """Additive mask [B, 1, t, s] (0 / -inf) for documents (and the diagonal's causality), or
    None; False as the second value means the block is fully masked."""
    if q_docs is None or k_docs is None:
        return None, True
    allowed = q_docs[:, None, :, None] == k_docs[:, None, None, :]  # (B, 1, t, s)
    if causal:
        allowed = (
            allowed & torch.ones(allowed.shape[-2:], dtype=torch.bool, device=allowed.device).tril()
        )
    if not bool(allowed.any()):
        return None, False
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill(~allowed, float("-inf")), True


def _plan(cp_size: int, rank: int, src: int) -> list[tuple[int, int, bool]]:
    """Visible (query half, key half, diagonal) pairs when ``rank``'s queries meet ``src``'s keys."""
    pairs = []
    for qi, qc in enumerate(zigzag_chunks(cp_size, rank)):
        for ki, kc in enumerate(zigzag_chunks(cp_size, src)):
            if kc <= qc:
                pairs.append((qi, ki, kc == qc))
    return pairs


def _halves(x: torch.Tensor | None, i: int, dim: int) -> torch.Tensor | None:
    return None if x is None else x.chunk(2, dim=dim)[i]


def _ring_pass(
    tensors: list[torch.Tensor], group: Any, rank: int, cp_size: int
) -> list[torch.Tensor]:
    """Send ``tensors`` to the next rank of the ring and receive the previous rank's."""
    nxt = dist.get_global_rank(group, (rank + 1) % cp_size)
    prv = dist.get_global_rank(group, (rank - 1) % cp_size)
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, prv, group) for r in received]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    return received


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        docs: torch.Tensor | None,
        group: Any,
        scale: float,
    ) -> torch.Tensor:
        cp_size, rank = dist.get_world_size(group), dist.get_rank(group)
        B, H, T, D = q.shape
        acc = _acc(q)
        out = q.new_zeros(B, H, T, D, dtype=acc)
        lse = q.new_full((B, H, T), float("-inf"), dtype=acc)
        out_h, lse_h = list(out.chunk(2, dim=2)), list(lse.chunk(2, dim=2))
        q_docs = None if docs is None else zigzag_shard(docs, cp_size, rank)
        kv = [k, v]
        for step in range(cp_size):
            src = (rank - step) % cp_size
            k_docs = None if docs is None else zigzag_shard(docs, cp_size, src)
            for qi, ki, diag in _plan(cp_size, rank, src):
                bias, visible = _doc_bias(
                    _halves(q_docs, qi, 1), _halves(k_docs, ki, 1), diag, q.dtype
                )
                if not visible:
                    continue
                o, s = _block(
                    q.chunk(2, dim=2)[qi],
                    kv[0].chunk(2, dim=2)[ki],
                    kv[1].chunk(2, dim=2)[ki],
                    diag and bias is None,
                    bias,
                    scale,
                )
                merged = torch.logaddexp(lse_h[qi], s)
                # exp(-inf - -inf) is nan: rows unseen so far and in this block stay zero.
                w_old = torch.exp(lse_h[qi] - merged).nan_to_num(0.0)[..., None]
                w_new = torch.exp(s - merged).nan_to_num(0.0)[..., None]
                out_h[qi] = out_h[qi] * w_old + o.to(acc) * w_new
                lse_h[qi] = merged
            if step < cp_size - 1:
                kv = _ring_pass(kv, group, rank, cp_size)
        out = torch.cat(out_h, dim=2).to(q.dtype)
        lse = torch.cat(lse_h, dim=2)
        ctx.save_for_backward(q, k, v, out, lse, *([] if docs is None else [docs]))
        ctx.group, ctx.scale, ctx.has_docs = group, scale, docs is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:  # type: ignore[override]
        q, k, v, out, lse, *rest = ctx.saved_tensors
        docs = rest[0] if ctx.has_docs else None
        group, scale = ctx.group, ctx.scale
        cp_size, rank = dist.get_world_size(group), dist.get_rank(group)
        grad_out = grad_out.contiguous()
        acc = _acc(q)
        dq = torch.zeros_like(q, dtype=acc)
        q_docs = None if docs is None else zigzag_shard(docs, cp_size, rank)
        # The K/V block travelling the ring, with the dk/dv its visitors have accumulated.
        travel = [
            k,
            v,
            torch.zeros_like(k, dtype=acc),
            torch.zeros_like(v, dtype=acc),
        ]
        for step in range(cp_size):
            src = (rank - step) % cp_size
            k_docs = None if docs is None else zigzag_shard(docs, cp_size, src)
            kb, vb, dk, dv = travel
            dk_h, dv_h = list(dk.chunk(2, dim=2)), list(dv.chunk(2, dim=2))
            dq_h = list(dq.chunk(2, dim=2))
            for qi, ki, diag in _plan(cp_size, rank, src):
                bias, visible = _doc_bias(
                    _halves(q_docs, qi, 1), _halves(k_docs, ki, 1), diag, q.dtype
                )
                if not visible:
                    continue
                gq, gk, gv = _block_backward(
                    grad_out.chunk(2, dim=2)[qi],
                    q.chunk(2, dim=2)[qi],
                    kb.chunk(2, dim=2)[ki],
                    vb.chunk(2, dim=2)[ki],
                    out.chunk(2, dim=2)[qi],
                    lse.chunk(2, dim=2)[qi],
                    diag and bias is None,
                    bias,
                    scale,
                )
                dq_h[qi] = dq_h[qi] + gq.to(acc)
                dk_h[ki] = dk_h[ki] + gk.to(acc)
                dv_h[ki] = dv_h[ki] + gv.to(acc)
            dq = torch.cat(dq_h, dim=2)
            travel = [kb, vb, torch.cat(dk_h, dim=2), torch.cat(dv_h, dim=2)]
            if cp_size > 1:
                # The last pass only returns dk/dv to their owner; K/V are not needed any more.
                moving = travel if step < cp_size - 1 else travel[2:]
                moved = _ring_pass(moving, group, rank, cp_size)
                travel = moved if step < cp_size - 1 else [kb, vb, *moved]
        dk, dv = travel[2], travel[3]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: Any = None,
    document_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of this rank's zig-zag shard against the whole sequence (ring of K/V).

    Args:
        q: [B, H, T_local, D] queries of the local shard (``T_local = T / cp``), RoPE applied.
        k: [B, H_kv, T_local, D] keys (H divisible by H_kv; repeated for the kernel).
        v: [B, H_kv, T_local, D] values.
        group: the context-parallel process group (None = world).
        document_ids: [B, T] *global* (unsharded) packed-document ids; tokens attend only within
            their document. None = one causal sequence.
        scale: q·k multiplier; default ``D ** -0.5``.

    Returns:
        [B, H, T_local, D], equal to the matching rows of full causal attention.
    """
    cp_size = dist.get_world_size(group)
    B, H, T_local, D = q.shape
    if k.shape[2] != T_local or v.shape[2] != T_local:
        raise ValueError(
            f"ring_attention: q, k, v must hold the same local tokens, got {T_local}, "
            f"{k.shape[2]}, {v.shape[2]} (a KV cache cannot be used with context parallelism)"
        )
    if T_local % 2:
        raise ValueError(
            f"ring_attention: local length {T_local} must be even (two zig-zag chunks)"
        )
    if document_ids is not None and tuple(document_ids.shape) != (B, T_local * cp_size):
        raise ValueError(
            f"ring_attention: document_ids shape {tuple(document_ids.shape)} must be the global "
            f"[B, T] = {(B, T_local * cp_size)}"
        )
    if H % k.shape[1]:
        raise ValueError(f"ring_attention: {H} query heads not a multiple of {k.shape[1]} kv heads")
    groups = H // k.shape[1]
    if groups > 1:  # the CPU flash kernel has no GQA; autograd sums dk/dv back over the groups
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out: torch.Tensor = _RingAttention.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        document_ids,
        group if group is not None else dist.group.WORLD,
        scale if scale is not None else D**-0.5,
    )
    return out


class RingAttentionFn:
    """An ``attention_fn`` for tune.models' attention modules: ``fn(q, k, v, mask, scale)``.

    Args:
        group: the context-parallel process group (None = world).
        document_ids: [B, T] global packed-document ids, or None.
    """

    def __init__(self, group: Any = None, document_ids: torch.Tensor | None = None) -> None:
        self.group = group
        self.document_ids = document_ids

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float
    ) -> torch.Tensor:
        if mask is not None:
            raise ValueError(
                "context parallelism handles causal and document masking itself: call the model "
                "without document_ids/attention_mask, and only with global causal attention layers "
                f"(no sliding window, soft-capping or sinks); got a mask of type {type(mask).__name__}"
            )
        return ring_attention(
            q, k, v, group=self.group, document_ids=self.document_ids, scale=scale
        )


@contextlib.contextmanager
def context_parallel_attention(
    model: nn.Module, group: Any = None, document_ids: torch.Tensor | None = None
) -> Iterator[RingAttentionFn]:
    """Route every ``attention_fn``-capable module of ``model`` through ``ring_attention``.

    Modules are found by their ``attention_fn`` attribute (tune.models' ``Attention`` and
    ``MLAttention``; not imported here); the previous value is restored on exit. Backward may run
    inside or after the block (the autograd function keeps the group and document ids).

    Args:
        model: the model (plain, FSDP2-wrapped or checkpointed).
        group: the context-parallel process group (None = world).
        document_ids: [B, T] global packed-document ids of this batch, or None.
    """
    fn = RingAttentionFn(group, document_ids)
    targets = [m for m in model.modules() if hasattr(m, "attention_fn")]
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no module with an `attention_fn` attribute to route "
            "through ring attention (tune.models' Attention/MLAttention have one)"
        )
    previous = [getattr(m, "attention_fn") for m in targets]  # noqa: B009 (duck-typed)
    try:
        for m in targets:
            setattr(m, "attention_fn", fn)  # noqa: B010
        yield fn
    finally:
        for m, prev in zip(targets, previous, strict=True):
            setattr(m, "attention_fn", prev)  # noqa: B010
