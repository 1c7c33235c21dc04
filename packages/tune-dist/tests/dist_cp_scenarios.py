"""Context-parallel scenarios run by ``dist_worker.py`` (in the shared 2- and 4-rank launches).

An 8192-token sequence of the tiny transformer (RoPE positions), plain causal and packed into
documents: the zig-zag-sharded ring-attention run's loss and gradients (summed over ranks) must
equal one process's; saved-tensor bytes of the forward are measured per rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_tiny_transformer import IGNORE, VOCAB, build_model, summed_loss
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

import tune.dist as td

CP_SEQ = 8192
DOC_LENGTHS = [1000, 37, 3000, 155, 2500, 1500]  # sums to 8192; boundaries cut across chunks


def cp_batch(packed: bool) -> dict[str, torch.Tensor]:
    """tokens, labels, RoPE positions and document ids [1, CP_SEQ] (one document unless packed)."""
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (1, CP_SEQ + 1), generator=g)
    labels = tokens[:, 1:].clone()
    labels[:, :100] = IGNORE  # a masked prompt
    lengths = DOC_LENGTHS if packed else [CP_SEQ]
    docs = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"tokens": tokens[:, :-1], "labels": labels, "positions": positions, "docs": docs}


class SavedBytes:
    """Bytes of distinct tensor storages autograd saves for backward (activation memory)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter):  # weights are not activations
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def per_document_attention(lengths: list[int]) -> Any:
    """The single-process reference core for packed documents: causal SDPA per document."""

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, _mask: Any, scale: float) -> Any:
        outs = [
            F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True)
            for qd, kd, vd in zip(*(t.split(lengths, dim=2) for t in (q, k, v)), strict=True)
        ]
        return torch.cat(outs, dim=2)

    return fn


def _set_attention_fn(model: nn.Module, fn: Any) -> None:
    for module in model.modules():
        if hasattr(module, "attention_fn"):
            module.attention_fn = fn


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_run(packed: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    """One process: (loss, gradients, saved bytes of the forward)."""
    batch = cp_batch(packed)
    model = build_model()
    if packed:
        _set_attention_fn(model, per_document_attention(DOC_LENGTHS))
    count = (batch["labels"] != IGNORE).sum()
    saved = SavedBytes()
    with saved_tensors_hooks(saved.pack, lambda t: t):
        loss = summed_loss(model(batch["tokens"], batch["positions"]), batch["labels"]) / count
    loss.backward()
    return loss.item(), _grads(model), saved.total


def cp_run(packed: bool, fsdp: bool = False) -> tuple[float, dict[str, torch.Tensor], int]:
    """All ranks: loss and gradients (summed over ranks) of the zig-zag ring-attention run."""
    cp, rank = dist.get_world_size(), dist.get_rank()
    batch = cp_batch(packed)
    model = build_model()
    if fsdp:
        td.apply_fsdp(model, block_match="layers.*")
    tokens, labels, positions = (
        td.zigzag_shard(batch[k], cp, rank) for k in ("tokens", "labels", "positions")
    )
    count = td.count_target_tokens(labels, IGNORE)  # summed over the shards
    saved = SavedBytes()
    docs = batch["docs"] if packed else None
    with td.context_parallel_attention(model, document_ids=docs):
        with saved_tensors_hooks(saved.pack, lambda t: t):
            local = summed_loss(model(tokens, positions), labels)
        # FSDP averages gradients over ranks; scaling by cp turns that into the sum.
        (local / count * (cp if fsdp else 1)).backward()
    loss = (td.all_reduce_sum(local.detach()) / count).item()
    if fsdp:
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    else:
        grads = _grads(model)
        for g in grads.values():
            dist.all_reduce(g)
    return loss, grads, saved.total


def _max_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), (sorted(a), sorted(b))
    return max((a[k] - b[k]).abs().max().item() for k in a)


def scenario_cp(info: td.DistributedInfo) -> dict[str, Any]:
    """CP = world size: plain causal and packed documents (and packed under FSDP2 on the same
    ranks at 2 ranks). Rank 0 checks the causal runs against one process, the last rank the packed
    ones (the summed gradients are on every rank); saved bytes per rank."""
    out: dict[str, Any] = {"cp": info.world_size, "saved_bytes": {}}
    cases = [("causal", False, False), ("packed", True, False)]
    if info.world_size == 2:
        cases.append(("packed_fsdp", True, True))
    runs = {case: cp_run(packed, fsdp) for case, packed, fsdp in cases}
    out["saved_bytes"] = {case: run[2] for case, run in runs.items()}
    checks = {0: False, info.world_size - 1: True}  # rank -> packed
    if info.rank in checks:
        packed = checks[info.rank]
        ref_loss, ref_grads, ref_saved = reference_run(packed)
        for case, packed_case, _ in cases:
            if packed_case != packed:
                continue
            loss, grads, _saved = runs[case]
            out[case] = {
                "loss": loss,
                "ref_loss": ref_loss,
                "loss_err": abs(loss - ref_loss),
                "grad_err": _max_err(grads, ref_grads),
                "grad_max": max(g.abs().max().item() for g in ref_grads.values()),
                "ref_saved_bytes": ref_saved,
            }
    return out
