"""Log-likelihood scoring of a causal LM: continuations given a context (multiple choice is the
argmax over the choices' scores) and whole sequences in rolling windows.

The model is any callable ``tokens [B, T] -> logits [B, T, V]`` (a tune model, a wrapped
``transformers`` model); rows are right-padded, which causal attention never lets reach a real
position. The windows and cuts follow lm-evaluation-harness, so scores equal its reference models'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def model_device(model: LogitsFn, device: torch.device | str | None = None) -> torch.device:
    """``device`` if given, else the device of ``model``'s first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")


@torch.no_grad()
def score_continuations(
    model: LogitsFn,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_length: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> list[tuple[float, bool]]:
    """Log-probability of each continuation given its context, and whether greedy decoding
    would produce it.

    Each row is ``context + continuation`` cut from the left to ``max_length + 1`` tokens, so
    the continuation keeps as much context as fits.

    Args:
        model: ``tokens [B, T] -> logits [B, T, V]``.
        pairs: (context ids, continuation ids); the context non-empty, the continuation
            non-empty and at most ``max_length`` tokens.
        max_length: tokens the model sees in one forward.
        batch_size: rows per forward (right-padded).
        device: where the tokens go (None: ``model``'s parameters' device, else the CPU).

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
    on = model_device(model, device)
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
        logprobs = F.log_softmax(model(tokens.to(on)).float(), dim=-1)  # [B, T, V]
        for b, i in enumerate(chunk):
            whole, n = rows[i]
            end = len(whole) - 1
            target = torch.tensor(whole[-n:], device=on)  # [n]
            scores = logprobs[b, end - n : end]  # [n, V]
            picked = scores.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((scores.argmax(-1) == target).all())
            results[i] = (float(picked.double().sum()), greedy)
    return results


def rolling_loglikelihood(
    model: LogitsFn,
    tokens: Sequence[int],
    *,
    prefix_token: int,
    max_length: int,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> float:
    """Log-probability of a whole token sequence, each token predicted once from as much context
    as fits (windows of ``max_length``), the first from ``prefix_token``.

    Args:
        model: ``tokens [B, T] -> logits [B, T, V]``.
        tokens: the sequence to score (may exceed ``max_length``); empty scores 0.
        prefix_token: what the first token is predicted from (BOS or EOS).
        max_length: tokens the model sees in one forward.
        batch_size: windows per forward.
        device: as in ``score_continuations``.
    """
    if not tokens:
        return 0.0
    full = [prefix_token, *tokens]
    pairs = [
        (full[: i + 1], list(tokens[i : i + max_length])) for i in range(0, len(tokens), max_length)
    ]
    scores = score_continuations(
        model, pairs, max_length=max_length, batch_size=batch_size, device=device
    )
    return sum(logprob for logprob, _ in scores)
