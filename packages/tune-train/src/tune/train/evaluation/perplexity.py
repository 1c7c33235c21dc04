"""Perplexity over dataset batches: the token-mean cross-entropy of the labelled tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tune.train.steps.token import micro_batch_loss


@dataclass(frozen=True)
class PerplexityResult:
    """Token-mean cross-entropy over the scored tokens and its exponential.

    Args:
        loss: mean negative log-likelihood per scored token (nats).
        perplexity: ``exp(loss)``.
        tokens: scored tokens (labels other than -100).
        sequences: sequences scored (rows of the batches as given).
        batches: batches scored.
    """

    loss: float
    perplexity: float
    tokens: int
    sequences: int
    batches: int


@torch.no_grad()
def dataset_perplexity(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    fused: bool,
    softcap: float | None = None,
    max_batches: int | None = None,
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` over sft-style batches (``tokens``, aligned ``labels``, ...).

    Args:
        model: a model in eval mode, as ``tune.train.steps.micro_batch_loss`` takes it
            (``forward(tokens, ...) -> logits [B, T, V]``; with ``fused``, ``return_hidden=True``
            and an ``output`` linear layer).
        batches: ``tokens`` [B, T], ``labels`` [B, T] (-100 for unscored positions), optionally
            ``positions``, ``document_ids`` or ``attention_mask``.
        fused: apply the output projection inside a chunked CE (no [B, T, V] logits).
        softcap: final-logit soft-capping (Gemma 2) for the fused CE.
        max_batches: stop after this many batches (None: all).
        prepare: applied to each batch once on the model's device (e.g. laying its real tokens
            end to end with ``tune.data.remove_padding``); None: as it is.

    Raises:
        ValueError: no token was scored (every label is -100).
    """
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    sequences = n_batches = 0
    for batch in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        sequences += int(batch["tokens"].shape[0])
        on_device = {k: v.to(device) for k, v in batch.items()}
        loss = micro_batch_loss(
            model, prepare(on_device) if prepare else on_device, fused=fused, softcap=softcap
        )
        total += loss.loss_sum.double()
        count += loss.num_tokens.double()
        n_batches += 1
    tokens = int(count.item())
    if tokens == 0:
        raise ValueError(
            f"perplexity: no scored token in {n_batches} batches (every label is -100); with "
            "assistant-only scoring the data needs assistant turns"
        )
    mean = float(total.item()) / tokens
    return PerplexityResult(mean, math.exp(mean), tokens, sequences, n_batches)
