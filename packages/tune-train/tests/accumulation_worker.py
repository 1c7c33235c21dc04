"""Tiny causal LM and micro-batches for the accumulation tests; run under torchrun as a worker.

Under torchrun (2 gloo ranks) each rank takes 2 of the 4 micro-batches, accumulates with
`GradientAccumulator` and compares its synchronised gradients with one process's full batch.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from tune.train import (
    GradientAccumulator,
    count_trained_tokens,
    cross_entropy,
    distributed_sum,
    fused_linear_cross_entropy,
)

VOCAB, DIM = 64, 16
LENGTHS = [3, 29, 7, 17]  # very different lengths


class TinyCausalLM(nn.Module):
    """Embedding, one causal single-head attention block, norm, LM head (right padding is inert)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.norm = nn.LayerNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        x = self.tok_embeddings(tokens)  # (B, T, D)
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, T, D) each
        x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        h = self.norm(x)
        return h if return_hidden else self.output(h)


def make_model(dtype: torch.dtype = torch.float32) -> TinyCausalLM:
    torch.manual_seed(1234)
    return TinyCausalLM().to(dtype)


def micro_batches() -> list[dict[str, torch.Tensor]]:
    """Four single-sequence micro-batches; the first half of the longer ones is an untrained prompt."""
    g = torch.Generator().manual_seed(7)
    batches = []
    for length in LENGTHS:
        tokens = torch.randint(0, VOCAB, (1, length), generator=g)
        labels = torch.randint(0, VOCAB, (1, length), generator=g)
        labels[:, : length // 3] = -100
        batches.append({"tokens": tokens, "labels": labels})
    return batches


def padded_batch(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The same sequences as one right-padded batch (pad token 0, label -100)."""
    width = max(b["tokens"].shape[1] for b in batches)
    tokens = torch.zeros(len(batches), width, dtype=torch.long)
    labels = torch.full((len(batches), width), -100, dtype=torch.long)
    for i, b in enumerate(batches):
        n = b["tokens"].shape[1]
        tokens[i, :n], labels[i, :n] = b["tokens"][0], b["labels"][0]
    return {"tokens": tokens, "labels": labels}


def micro_batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], fused: bool):
    if fused:
        hidden = model(batch["tokens"], return_hidden=True)
        weight = model.module.output.weight if hasattr(model, "module") else model.output.weight
        return fused_linear_cross_entropy(hidden, weight, batch["labels"], chunk_size=8)
    return cross_entropy(model(batch["tokens"]), batch["labels"])


def full_batch_reference(dtype: torch.dtype) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss (mean over all real tokens) and gradients of one batch of 4 in one process."""
    model = make_model(dtype)
    batch = padded_batch(micro_batches())
    out = cross_entropy(model(batch["tokens"]), batch["labels"])
    loss = out.loss_sum / out.num_tokens
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def _accumulate_on_rank(mode: str, fused: bool, rank: int, world: int) -> tuple[nn.Module, dict]:
    import torch.distributed as dist

    model = make_model()
    mine = micro_batches()[rank * 2 : rank * 2 + 2]
    if mode == "ddp":
        # DDP averages gradients over ranks: the loss scale multiplies by the world size.
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        acc = GradientAccumulator(distributed_sum(), grad_average_world_size=world)
        acc.start_step([count_trained_tokens(b["labels"]) for b in mine])
        with wrapped.no_sync():
            acc.scale(micro_batch_loss(wrapped, mine[0], fused)).backward()
        acc.scale(micro_batch_loss(wrapped, mine[1], fused)).backward()
    else:
        # Gradients summed by hand: no world-size factor.
        acc = GradientAccumulator(distributed_sum(), grad_average_world_size=1)
        acc.start_step([count_trained_tokens(b["labels"]) for b in mine])
        for b in mine:
            acc.scale(micro_batch_loss(model, b, fused)).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
    return model, acc.finish_step()


def _worker(out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    ref_loss, ref_grads = full_batch_reference(torch.float32)
    results = {}
    for mode, fused in (("ddp", False), ("sum", True)):
        model, metrics = _accumulate_on_rank(mode, fused, rank, world)
        errors = {
            n: float((p.grad - ref_grads[n]).norm() / ref_grads[n].norm())
            for n, p in model.named_parameters()
        }
        results[f"{mode}_{'fused' if fused else 'ce'}_rank{rank}"] = {
            "loss": metrics["loss"],
            "ref_loss": ref_loss,
            "num_tokens": metrics["num_tokens"],
            "grad_rel_errors": errors,
        }
    gathered: list = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({k: v for r in gathered for k, v in r.items()}, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
    # Leave without running interpreter teardown: with DDP's reducer and gloo's threads it
    # sometimes aborts ("terminate called without an active exception") after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
