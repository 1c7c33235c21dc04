"""Token-level scoring of a causal LM: continuation log-likelihoods, rolling log-likelihoods, and
perplexity over dataset batches. Plain torch; the lm-evaluation-harness adapter builds on it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tune.recipes.common.padding_free import padding_free_batch
from tune.train.steps.token import micro_batch_loss


@dataclass(frozen=True)
class PerplexityResult:
    """Token-mean cross-entropy over the scored tokens and its exponential.

    Args:
        loss: mean negative log-likelihood per scored token (nats).
        perplexity: ``exp(loss)``.
        tokens: scored tokens (labels other than -100).
        sequences: sequences scored.
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
    padding_free: bool | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` over padded sft batches (``tokens``, aligned ``labels``, ...).

    Args:
        model: a tune model in eval mode.
        batches: from ``tune.data`` (``labels`` [B, T] with -100 for unscored positions).
        fused: apply the output projection inside a chunked CE.
        softcap: final-logit soft-capping (Gemma 2) for the fused CE.
        max_batches: stop after this many batches (None: all).
        padding_free: lay each batch's real tokens end to end (``tune.data.remove_padding``),
            so no compute goes to padding; the same values up to float round-off. None: on when
            the model is on the CPU (on CUDA, documents go through FlexAttention, compiled per
            length).

    Raises:
        ValueError: no token was scored (every label is -100).
    """
    device = next(model.parameters()).device
    if padding_free is None:
        padding_free = device.type == "cpu"
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    sequences = n_batches = 0
    for batch in batches:
        if max_batches is not None and n_batches >= max_batches:
            break
        sequences += int(batch["tokens"].shape[0])
        batch = padding_free_batch({k: v.to(device) for k, v in batch.items()}, padding_free)
        loss = micro_batch_loss(model, batch, fused=fused, softcap=softcap)
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


@torch.no_grad()
def score_continuations(
    model: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_length: int,
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """Log-probability of each continuation given its context, and whether greedy decoding
    would produce it.

    Each row is ``context + continuation`` cut from the left to ``max_length + 1`` tokens, so
    the continuation keeps as much context as fits.

    Args:
        model: a tune model (logits [B, T, V]).
        pairs: (context ids, continuation ids); the context non-empty, the continuation
            non-empty and at most ``max_length`` tokens.
        max_length: tokens the model sees in one forward.
        batch_size: rows per forward (right-padded).

    Raises:
        ValueError: an empty context or continuation, or a continuation longer than
            ``max_length``, naming the request index.
    """
    rows: list[tuple[list[int], int]] = []
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"request {i}: context and continuation must be non-empty")
        if len(continuation) > max_length:
            raise ValueError(
                f"request {i}: continuation of {len(continuation)} tokens > max_length={max_length}"
            )
        whole = [*context, *continuation][-(max_length + 1) :]
        rows.append((whole, len(continuation)))
    device = next(model.parameters()).device
    # Longest first: rows of one batch have similar lengths (less padding); results keep order.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = max(len(rows[i][0]) for i in chunk) - 1
        tokens = torch.zeros((len(chunk), length), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids = rows[i][0][:-1]
            tokens[b, : len(ids)] = torch.tensor(ids)
        # Right padding never reaches a real position under causal attention.
        logprobs = F.log_softmax(model(tokens.to(device)).float(), dim=-1)  # [B, T, V]
        for b, i in enumerate(chunk):
            whole, n = rows[i]
            end = len(whole) - 1
            target = torch.tensor(whole[-n:], device=device)  # [n]
            scores = logprobs[b, end - n : end]  # [n, V]
            picked = scores.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((scores.argmax(-1) == target).all())
            results[i] = (float(picked.double().sum()), greedy)
    return results


def rolling_loglikelihood(
    model: nn.Module,
    tokens: Sequence[int],
    *,
    prefix_token: int,
    max_length: int,
    batch_size: int = 8,
) -> float:
    """Log-probability of a whole token sequence, each token predicted once from as much context
    as fits (windows of ``max_length``), the first from ``prefix_token``.

    Args:
        model: a tune model.
        tokens: the sequence to score (may exceed ``max_length``).
        prefix_token: what the first token is predicted from (BOS or EOS).
        max_length: tokens the model sees in one forward.
        batch_size: windows per forward.
    """
    if not tokens:
        return 0.0
    full = [prefix_token, *tokens]
    pairs = [
        (full[: i + 1], list(tokens[i : i + max_length])) for i in range(0, len(tokens), max_length)
    ]
    scores = score_continuations(model, pairs, max_length=max_length, batch_size=batch_size)
    return sum(logprob for logprob, _ in scores)
