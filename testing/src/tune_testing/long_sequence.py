"""Long single sequences (4k to 32k tokens) on a tiny tune.models Llama, on the CPU.

Shared by ``benchmarks/dist/bench_long_sequence.py`` and ``integration_tests/test_long_sequence.py``:
the model, the data (a Markov chain, so a held-out sequence's loss can fall), one AdamW step with
plain or chunked cross-entropy and optional activation checkpointing, optionally under context
parallelism, and the linearity measure of peak memory against sequence length::

    run = LongSequenceRun.build(checkpointing=True, chunked=True)
    batch = markov_batch(32768, seed=1)
    loss = run.step(batch)                   # one AdamW step, token-mean loss
    peak = run.peak_bytes(batch)             # tune_testing.memory.step_peak_bytes
    spread = linearity_spread(lengths, peaks)  # 1.0 = exactly linear

With causal SDPA (no mask) the CPU flash kernel keeps attention O(T) in memory; a dense
[B, 1, T, T] mask (``attention_mask=`` or ``document_ids`` without a per-document layout) or the
math kernel makes it O(T^2), which ``linearity_spread`` shows as increments that grow with T.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

import tune.dist as td
from tune.models import build_from_hf_config
from tune.train.losses import TokenLoss, cross_entropy, fused_linear_cross_entropy
from tune_testing.memory import step_peak_bytes

# Small enough that activations, not weights or AdamW state, dominate the peak from 4k tokens.
HF_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}
VOCAB: int = HF_CONFIG["vocab_size"]
IGNORE = -100


def markov_batch(seq_len: int, *, seed: int, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    """``tokens``, ``labels`` (next token) and ``positions`` [1, seq_len] of a learnable chain.

    Every token follows a fixed successor (the same for every seed) with probability 0.75, else a
    uniform draw: a model that learns the successor table lowers the loss on any other sequence.
    """
    successor = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, vocab, (seq_len + 1,), generator=g)
    follow = torch.rand(seq_len + 1, generator=g) < 0.75
    table, drawn, kept = successor.tolist(), noise.tolist(), follow.tolist()
    chain = [drawn[0]]
    for i in range(1, seq_len + 1):
        chain.append(table[chain[-1]] if kept[i] else drawn[i])
    tokens = torch.tensor(chain)
    return {
        "tokens": tokens[None, :-1],
        "labels": tokens[None, 1:],
        "positions": torch.arange(seq_len)[None],
    }


@dataclass
class LongSequenceRun:
    """A tiny model, its AdamW and how its loss is computed.

    Args:
        model: the tune.models Transformer (checkpointed blocks if asked).
        optimizer: AdamW over its parameters.
        chunked: ``fused_linear_cross_entropy`` on the hidden states (no [T, V] logits) instead
            of ``cross_entropy`` on the logits.
        chunk_size: tokens per loss chunk when ``chunked``.
        cp_group: the context-parallel group (``None``: one process); batches are then the
            full sequence and each rank trains on its zig-zag shard.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    chunked: bool
    chunk_size: int = 1024
    cp_group: Any = None

    @classmethod
    def build(
        cls,
        *,
        checkpointing: bool,
        chunked: bool,
        chunk_size: int = 1024,
        cp_group: Any = None,
        lr: float = 3e-3,
        seed: int = 0,
    ) -> LongSequenceRun:
        """The same initial weights for every configuration and rank (``seed``)."""
        torch.manual_seed(seed)
        model = build_from_hf_config(HF_CONFIG)
        if checkpointing:
            td.apply_activation_checkpointing(model, "layers.*")
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        return cls(model, optimizer, chunked, chunk_size, cp_group)

    def _local(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.cp_group is None:
            return batch
        cp, rank = dist.get_world_size(self.cp_group), dist.get_rank(self.cp_group)
        return {k: td.zigzag_shard(v, cp, rank) for k, v in batch.items()}

    @contextlib.contextmanager
    def _attention(self) -> Iterator[None]:
        if self.cp_group is None:
            yield
        else:
            with td.context_parallel_attention(self.model, self.cp_group):
                yield

    def loss(self, batch: dict[str, torch.Tensor]) -> TokenLoss:
        """Summed loss of this rank's share of ``batch`` and its count of tokens."""
        local = self._local(batch)
        # An ``attention_mask`` [B, T] (1 = real token) makes the model build a dense mask.
        inputs = {k: local[k] for k in ("positions", "attention_mask") if k in local}
        if not self.chunked:
            logits = self.model(local["tokens"], **inputs)  # [B, T, V]
            return cross_entropy(logits, local["labels"])
        hidden = self.model(local["tokens"], **inputs, return_hidden=True)  # [B, T, D]
        weight = cast(nn.Linear, self.model.get_submodule("output")).weight  # [V, D]
        return fused_linear_cross_entropy(
            hidden.flatten(0, 1), weight, local["labels"].flatten(), chunk_size=self.chunk_size
        )

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One AdamW step on ``batch``; returns its token-mean loss (over all CP ranks)."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._attention():
            loss = self.loss(batch)
            count = loss.num_tokens
            if self.cp_group is not None:
                count = td.count_target_tokens(self._local(batch)["labels"], IGNORE, self.cp_group)
            (loss.loss_sum / count).backward()
        total = loss.loss_sum.detach()
        if self.cp_group is not None:  # each rank has its shard's share of every gradient
            for p in self.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=self.cp_group)
            total = td.all_reduce_sum(total, self.cp_group)
        self.optimizer.step()
        return float(total / count)

    @torch.no_grad()
    def eval_loss(self, batch: dict[str, torch.Tensor]) -> float:
        """Token-mean loss of ``batch`` without a step (over all CP ranks)."""
        with self._attention():
            loss = self.loss(batch)
        total, count = loss.loss_sum, loss.num_tokens
        if self.cp_group is not None:
            total, count = (
                td.all_reduce_sum(total, self.cp_group),
                td.all_reduce_sum(count, self.cp_group),
            )
        return float(total / count)

    def timed_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """(token-mean loss, wall seconds) of one step."""
        start = time.perf_counter()
        loss = self.step(batch)
        return loss, time.perf_counter() - start

    def peak_bytes(self, batch: dict[str, torch.Tensor]) -> int:
        """Peak bytes alive during one step (after a warm-up step made the AdamW state)."""
        if not self.optimizer.state:
            self.step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        return step_peak_bytes(lambda: self.step(batch), self.model, self.optimizer)


def increments_per_token(lengths: Sequence[int], peaks: Sequence[int]) -> list[float]:
    """Bytes per added token between consecutive lengths: ``(P[i+1] - P[i]) / (T[i+1] - T[i])``."""
    if len(lengths) != len(peaks) or len(lengths) < 3:
        raise ValueError(f"need >= 3 lengths with one peak each, got {lengths} and {peaks}")
    return [
        (peaks[i + 1] - peaks[i]) / (lengths[i + 1] - lengths[i]) for i in range(len(peaks) - 1)
    ]


def linearity_spread(lengths: Sequence[int], peaks: Sequence[int]) -> float:
    """Largest over smallest per-token increment (1.0: peak exactly linear in T).

    Memory a + b*T gives 1.0 for any lengths; a + b*T + c*T^2 over doublings gives increments
    b + 3cT, b + 6cT, ...: a spread that grows towards 2**(n-2) as the T^2 term dominates.
    """
    inc = increments_per_token(lengths, peaks)
    if min(inc) <= 0:
        return float("inf")
    return max(inc) / min(inc)
