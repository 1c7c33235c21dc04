"""Packed tune.data batches as keyword arguments for a `transformers` causal LM.

A packed row holds several documents end to end (``document_ids``, ``positions`` restarting at 0
for each). ``model(input_ids=tokens, position_ids=positions)`` alone does not keep them apart:
transformers (5.x) infers document boundaries from ``position_ids`` only when no cache is built
and no attention mask is given, and its causal LMs build a cache in every forward unless
``use_cache=False``, so by default every token attends to the earlier documents of its row.
``transformers_inputs`` states the boundaries explicitly, in one of two forms:

- ``attention="mask"``: a 4-D block-causal ``attention_mask`` [B, 1, T, T] (token q sees token k
  when both are in the same document and k <= q), which transformers passes to the attention
  kernel as it is. Additive float (0 or the dtype's minimum) works with ``eager`` and ``sdpa``;
  ``torch.bool`` (True = attend) with ``sdpa`` only. It costs B * T * T elements.
- ``attention="flash"``: ``cu_seq_lens_q/k`` (int32, the start of every document in the batch
  flattened to B * T, then B * T) and ``max_length_q/k`` (the longest document), the keywords
  transformers' flash-attention path (``flash_attention_2/3``) hands to a varlen kernel.

Both carry ``position_ids`` restarting per document and ``use_cache=False``.

Labels: tune.data's ``labels[t]`` is already the target of ``logits[t]`` (-100 = not trained;
the last token of every document is -100, so no loss crosses into the next document).
transformers shifts ``labels`` itself (``logits[t]`` against ``labels[t + 1]``), so the helper
returns them shifted right by one (``transformers_labels``): ``model(**kwargs).loss`` is then the
mean over the batch's trained tokens, exactly the loss of tune.data's aligned labels.

In a loop::

    for batch in loader:  # StreamingLoader(..., packing="best_fit")
        out = model(**transformers_inputs(batch, attention="mask", dtype=model.dtype))
        out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tune.data.masking import IGNORE_INDEX

TRANSFORMERS_ATTENTION_FORMS = ("mask", "flash")


def _document_starts(document_ids: Tensor) -> Tensor:
    """[B, T] bool: True where a document begins (every row's first token, then each change)."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return starts


def _check_document_ids(document_ids: Tensor) -> None:
    if document_ids.dim() != 2:
        raise ValueError(
            f"transformers_inputs: 'document_ids' must be [B, T], got {tuple(document_ids.shape)}"
        )
    if document_ids.dtype.is_floating_point or document_ids.dtype == torch.bool:
        raise ValueError(
            f"transformers_inputs: 'document_ids' must be integers, got {document_ids.dtype}"
        )
    # The mask compares ids while cu_seq_lens follows changes; they agree only for contiguous
    # documents, which non-decreasing ids guarantee (tune.data numbers them 0, 1, ... per row).
    backwards = (document_ids[:, 1:] < document_ids[:, :-1]).nonzero()
    if len(backwards):
        row, col = backwards[0].tolist()
        raise ValueError(
            f"transformers_inputs: 'document_ids' must not decrease along a row (each document "
            f"one contiguous run); row {row} goes from {document_ids[row, col].item()} to "
            f"{document_ids[row, col + 1].item()} at position {col + 1}"
        )


def block_causal_mask(document_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """4-D attention mask of packed rows: each token sees the earlier tokens of its own document.

    Args:
        document_ids: [B, T] integer document index per token, non-decreasing along each row.
        dtype: a float dtype (the model's compute dtype) for an additive mask, 0 where attended
            and the dtype's minimum elsewhere (``eager`` and ``sdpa``); or ``torch.bool`` for a
            boolean mask, True where attended (``sdpa`` only: ``eager`` adds the mask).

    Returns:
        [B, 1, T, T] mask on the ids' device, indexed [batch, head, query, key].
    """
    _check_document_ids(document_ids)
    t = document_ids.shape[1]
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()
    allowed = (same & causal).unsqueeze(1)  # (B, 1, T, T)
    if dtype == torch.bool:
        return allowed
    if not dtype.is_floating_point:
        raise ValueError(
            f"block_causal_mask: dtype must be a float dtype or torch.bool, got {dtype}"
        )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=document_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def packed_seq_lens(document_ids: Tensor) -> tuple[Tensor, int]:
    """Cumulative document lengths of packed rows laid end to end, as flash-attention takes them.

    Args:
        document_ids: [B, T] integer document index per token, non-decreasing along each row.

    Returns:
        ``cu_seq_lens`` [D + 1] int32 (the offset of each of the D documents in the flattened
        B * T tokens, then B * T) and the longest document's length (a Python int).
    """
    _check_document_ids(document_ids)
    starts = _document_starts(document_ids).flatten().nonzero().flatten()  # (D,)
    total = torch.tensor([document_ids.numel()], device=document_ids.device)
    cu_seq_lens = torch.cat([starts, total]).to(torch.int32)
    return cu_seq_lens, int(cu_seq_lens.diff().max().item())


def document_positions(document_ids: Tensor) -> Tensor:
    """[B, T] int64 position of each token within its document (0 at every document start)."""
    _check_document_ids(document_ids)
    index = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    start_of_doc = torch.where(_document_starts(document_ids), index, 0).cummax(dim=1).values
    return index - start_of_doc


def transformers_labels(labels: Tensor) -> Tensor:
    """tune.data's aligned labels in transformers' convention (shifted inside the model).

    transformers scores ``logits[t]`` against ``labels[t + 1]``; tune.data's ``labels[t]`` is
    already the target of ``logits[t]``. Shifting right by one (-100 first) makes the two equal.

    Args:
        labels: [B, T] aligned labels, -100 = not trained; the last column must be -100
            (tune.data's always is: nothing follows a row's last token).

    Returns:
        [B, T] int64 labels for ``model(..., labels=...)``.
    """
    if labels.dim() != 2:
        raise ValueError(f"transformers_labels: 'labels' must be [B, T], got {tuple(labels.shape)}")
    trained_last = (labels[:, -1] != IGNORE_INDEX).nonzero()
    if len(trained_last):
        row = int(trained_last[0].item())
        raise ValueError(
            f"transformers_labels: row {row} trains its last position (label "
            f"{labels[row, -1].item()}); aligned labels end with {IGNORE_INDEX}, since nothing "
            "follows the last token"
        )
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, 1:] = labels[:, :-1]
    return out


def _check_labels_stay_in_documents(labels: Tensor, document_ids: Tensor) -> None:
    """Refuse a trained label at a document's last token: it would target the next document."""
    ends = torch.ones_like(document_ids, dtype=torch.bool)
    ends[:, :-1] = document_ids[:, 1:] != document_ids[:, :-1]
    crossing = (ends & (labels != IGNORE_INDEX)).nonzero()
    if len(crossing):
        row, col = crossing[0].tolist()
        raise ValueError(
            f"transformers_inputs: 'labels' trains the last token of a document (row {row}, "
            f"position {col}, label {labels[row, col].item()}), which would predict the next "
            f"document; expected {IGNORE_INDEX} there (tune.data's builders end every sample so)"
        )


def transformers_inputs(
    batch: Mapping[str, Tensor],
    *,
    attention: str = "mask",
    dtype: torch.dtype = torch.float32,
    labels: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for a transformers causal LM on packed rows, documents kept apart.

    Args:
        batch: a packed batch (``collate_packed``, ``StreamingLoader(packing=...)``) or a
            padding-free one (``remove_padding``): ``tokens`` and ``document_ids`` [B, T],
            optionally ``positions`` [B, T] (else counted from each document's start) and
            ``labels`` [B, T] (aligned, -100 = not trained).
        attention: ``mask`` (a 4-D block-causal ``attention_mask``; ``eager``, ``sdpa``) or
            ``flash`` (``cu_seq_lens_q/k`` and ``max_length_q/k``; ``flash_attention_2/3``).
        dtype: the mask's dtype for ``attention="mask"``: the model's compute dtype, or
            ``torch.bool`` for ``sdpa`` only (see ``block_causal_mask``).
        labels: add ``labels`` in transformers' convention (``transformers_labels``), so the
            output's ``loss`` is the mean over trained tokens. False leaves the loss to you:
            compare ``logits[:, t]`` with ``batch["labels"][:, t]``.

    Returns:
        ``input_ids``, ``position_ids``, ``use_cache=False``, ``labels`` (when asked), and
        ``attention_mask`` [B, 1, T, T] or ``cu_seq_lens_q``/``cu_seq_lens_k`` [D + 1] int32 with
        ``max_length_q``/``max_length_k`` (int).

    Raises:
        ValueError: naming the missing key, the tensor whose shape differs from ``tokens``, an
            unknown ``attention``, or labels that cross a document boundary.
    """
    if attention not in TRANSFORMERS_ATTENTION_FORMS:
        raise ValueError(
            f"transformers_inputs: attention must be one of {TRANSFORMERS_ATTENTION_FORMS}, "
            f"got {attention!r}"
        )
    required = ("tokens", "document_ids", "labels") if labels else ("tokens", "document_ids")
    for key in required:
        if key not in batch:
            hint = (
                "; a padded batch becomes one with remove_padding(batch)"
                if key == "document_ids" and "attention_mask" in batch
                else ""
            )
            raise ValueError(
                f"transformers_inputs: the batch has no {key!r} (keys: {sorted(batch)}){hint}"
            )
    tokens, document_ids = batch["tokens"], batch["document_ids"]
    for key in ("document_ids", "positions", "labels"):
        if key in batch and batch[key].shape != tokens.shape:
            raise ValueError(
                f"transformers_inputs: {key!r} has shape {tuple(batch[key].shape)}, expected the "
                f"tokens' shape {tuple(tokens.shape)}"
            )
    _check_document_ids(document_ids)
    positions = batch["positions"] if "positions" in batch else document_positions(document_ids)
    out: dict[str, Any] = {"input_ids": tokens, "position_ids": positions, "use_cache": False}
    if labels:
        _check_labels_stay_in_documents(batch["labels"], document_ids)
        out["labels"] = transformers_labels(batch["labels"])
    if attention == "mask":
        out["attention_mask"] = block_causal_mask(document_ids, dtype)
    else:
        cu_seq_lens, max_length = packed_seq_lens(document_ids)
        out.update(
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=max_length,
            max_length_k=max_length,
        )
    return out
