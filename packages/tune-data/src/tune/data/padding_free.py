"""Padding-free batches: the real tokens of a padded batch laid end to end as one packed row.

A padded batch [B, T] spends every layer's compute on its padding: on short, uneven examples a
third of the tokens or more. ``remove_padding`` keeps only the real tokens, in order, as one row
[1, R] where each example is a document of its own (``document_ids``) with its own positions, so
a model with document-masked attention computes exactly what it computed on the padded batch for
every real token, on R tokens instead of B * T. Labels are already aligned per example (the last
real token of an example keeps its own label), so no label crosses from one example into the next.

In a loop::

    enabled = resolve_padding_free(None, device=device, packing=False, compile=False, tp_size=1)
    for batch in loader:
        batch = padding_free_batch({k: v.to(device) for k, v in batch.items()}, enabled)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

import torch

logger = logging.getLogger(__name__)


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


def resolve_padding_free(
    setting: bool | None,
    *,
    device: torch.device,
    packing: bool,
    compile: bool,
    tp_size: int,
    key: str = "data.padding_free",
) -> bool:
    """Whether to lay each padded micro-batch end to end (`remove_padding`).

    `None` (auto) turns it on for CPU training without `torch.compile` or tensor parallelism:
    there the document-masked attention runs eagerly on any row length. On CUDA, documents go
    through FlexAttention, compiled for each distinct length, so auto leaves it off there (and a
    compiled model would recompile for each length too). Packed data has no padding to remove.

    Args:
        setting: True, False or None (auto).
        device: the training device.
        packing: the data is packed (then always False).
        compile: the model is compiled with `torch.compile`.
        tp_size: tensor-parallel degree (sequence parallelism splits the row).
        key: the config key of `setting`, named in the log.
    """
    if packing:
        return False
    if setting is None:
        setting = device.type == "cpu" and not compile and tp_size == 1
        logger.info("%s (auto): %s", key, "on" if setting else "off")
    elif setting and device.type == "cuda":
        logger.warning(
            "%s=true on CUDA: FlexAttention compiles once per distinct row length; expect "
            "recompilations until the lengths repeat",
            key,
        )
    return setting


def padding_free_batch(batch: Mapping[str, torch.Tensor], enabled: bool) -> dict[str, torch.Tensor]:
    """The batch itself, or its real tokens as one packed row [1, R] when `enabled`.

    Args:
        batch: a collated batch; one without `attention_mask` or already packed (`document_ids`)
            is returned as it is.
        enabled: `resolve_padding_free`'s answer.
    """
    if not enabled or "attention_mask" not in batch or "document_ids" in batch:
        return dict(batch)
    return remove_padding(batch)


def padding_free_batches(
    batches: Iterable[Mapping[str, torch.Tensor]], enabled: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """`padding_free_batch` over an iterable (validation batches)."""
    for batch in batches:
        yield padding_free_batch(batch, enabled)
