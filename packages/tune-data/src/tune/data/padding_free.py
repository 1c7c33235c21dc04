"""Padding-free batches: the real tokens of a padded batch laid end to end as one packed row.

A padded batch [B, T] spends every layer's compute on its padding: on short, uneven examples a
third of the tokens or more. ``remove_padding`` keeps only the real tokens, in order, as one row
[1, R] where each example is a document of its own (``document_ids``) with its own positions, so
a model with document-masked attention computes exactly what it computed on the padded batch for
every real token, on R tokens instead of B * T. Labels are already aligned per example (the last
real token of an example keeps its own label), so no label crosses from one example into the next.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def remove_padding(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One packed row of the real tokens of a padded batch.

    Args:
        batch: ``tokens`` [B, T] and ``attention_mask`` [B, T] (1 real, 0 padding; right or left
            padded), optionally ``positions`` [B, T] and any other per-token [B, T] tensors
            (``labels``, ...). Already packed batches (with ``document_ids``) are refused.

    Returns:
        Every per-token tensor of ``batch`` reduced to its real tokens, as [1, R] in row-major
        order, with ``positions`` (the given ones, or the count of real tokens before each token
        of its example) and ``document_ids`` (the example's row index); no ``attention_mask``.

    Raises:
        ValueError: naming the key that is missing or whose shape is not [B, T].
    """
    for key in ("tokens", "attention_mask"):
        if key not in batch:
            raise ValueError(f"remove_padding: the batch has no {key!r} (keys: {sorted(batch)})")
    if "document_ids" in batch:
        raise ValueError("remove_padding: the batch is already packed (it has 'document_ids')")
    tokens = batch["tokens"]
    if tokens.dim() != 2:
        raise ValueError(f"remove_padding: 'tokens' must be [B, T], got {tuple(tokens.shape)}")
    for key, value in batch.items():
        if value.shape != tokens.shape:
            raise ValueError(
                f"remove_padding: {key!r} has shape {tuple(value.shape)}, expected the tokens' "
                f"shape {tuple(tokens.shape)}"
            )
    real = batch["attention_mask"].bool()  # (B, T)
    out = {key: value[real].unsqueeze(0) for key, value in batch.items() if key != "attention_mask"}
    if "positions" not in out:
        out["positions"] = (real.long().cumsum(1) - 1)[real].unsqueeze(0)  # (1, R)
    rows = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1).expand_as(real)
    out["document_ids"] = rows[real].unsqueeze(0)  # (1, R)
    return out
