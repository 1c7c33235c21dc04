"""Collate samples into batches of tensors: padded SFT, packed rows, preference pairs, prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tune.data.masking import IGNORE_INDEX
from tune.data.packing import pad_pack


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def collate_padded(
    samples: Sequence[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Right-pad `{"tokens", "labels"}` samples to the longest, rounded up to a multiple.

    Padding is identified by position, never by token id, so pad_id == eos keeps trained EOS.

    Args:
        samples: B samples.
        pad_id: token id for padding.
        pad_to_multiple_of: round the length up to this multiple.

    Returns:
        `tokens`, `labels`, `positions`, `attention_mask` (1 real, 0 pad), each [B, T] int64.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    length = _round_up(max(len(s["tokens"]) for s in samples), pad_to_multiple_of)
    batch = len(samples)
    tokens = torch.full((batch, length), pad_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for i, sample in enumerate(samples):
        n = len(sample["tokens"])
        tokens[i, :n] = torch.tensor(sample["tokens"], dtype=torch.long)
        labels[i, :n] = torch.tensor(sample["labels"], dtype=torch.long)
        mask[i, :n] = 1
    positions = torch.arange(length, dtype=torch.long).expand(batch, length).clone()
    return {"tokens": tokens, "labels": labels, "positions": positions, "attention_mask": mask}


def collate_packed(
    packs: Sequence[dict[str, list[int]]], max_seq_len: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """Stack packed rows, each filled to `max_seq_len`.

    The tail padding of a row is a document of its own (`pad_pack`), so the model needs no
    `attention_mask`; `padding_mask` marks it for whoever counts real tokens (throughput meters).
    It is not a model input: `tokens`, `positions` and `document_ids` alone describe the row.

    Args:
        packs: outputs of `concat_documents`.
        max_seq_len: the row length T.
        pad_id: token id for padding.

    Returns:
        `tokens`, `labels`, `positions`, `document_ids`, each [B, T] int64, and `padding_mask`
        [B, T] bool (True on the tail padding).
    """
    if not packs:
        raise ValueError("cannot collate an empty batch")
    rows = [pad_pack(p, max_seq_len, pad_id) for p in packs]
    batch = {key: torch.tensor([r[key] for r in rows], dtype=torch.long) for key in rows[0]}
    real = torch.tensor([len(p["tokens"]) for p in packs], dtype=torch.long)  # (B,)
    batch["padding_mask"] = torch.arange(max_seq_len).unsqueeze(0) >= real.unsqueeze(1)  # (B, T)
    return batch


def collate_preference(
    samples: Sequence[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Pad preference pairs into one batch: rows 0..B-1 chosen, rows B..2B-1 rejected.

    Args:
        samples: B pairs with `chosen_tokens/labels` and `rejected_tokens/labels`, and for
            unpaired (KTO) samples a `desirable` flag each (`UnpairedBuilder`).
        pad_id: token id for padding.
        pad_to_multiple_of: round the length up to this multiple.

    Returns:
        `tokens`, `labels`, `positions`, `attention_mask`, each [2B, T] int64; with `desirable`
        [B] bool when the samples carry it.
    """
    rows = [
        {"tokens": s[f"{side}_tokens"], "labels": s[f"{side}_labels"]}
        for side in ("chosen", "rejected")
        for s in samples
    ]
    batch = collate_padded(rows, pad_id, pad_to_multiple_of)
    flags = [s.get("desirable") for s in samples]
    if any(flag is not None for flag in flags):
        if None in flags:
            raise ValueError(
                f"collate_preference: sample {flags.index(None)} of the batch has no 'desirable' "
                "flag while others have one; expected every sample unpaired or none"
            )
        batch["desirable"] = torch.tensor([bool(flag) for flag in flags], dtype=torch.bool)
    return batch


def collate_prompts(
    samples: Sequence[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, Any]:
    """Left-pad prompts for generation; answers are kept as strings.

    Args:
        samples: B `{"prompt_tokens", "answer", "index"}` dicts.
        pad_id: token id for padding.
        pad_to_multiple_of: round the length up to this multiple.

    Returns:
        `tokens`, `attention_mask`, `positions` ([B, T] int64; positions count real tokens from 0),
        `answers` (list of B strings) and `indices` ([B] row indices).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    length = _round_up(max(len(s["prompt_tokens"]) for s in samples), pad_to_multiple_of)
    batch = len(samples)
    tokens = torch.full((batch, length), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for i, sample in enumerate(samples):
        n = len(sample["prompt_tokens"])
        tokens[i, length - n :] = torch.tensor(sample["prompt_tokens"], dtype=torch.long)
        mask[i, length - n :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "tokens": tokens,
        "attention_mask": mask,
        "positions": positions,
        "answers": [s["answer"] for s in samples],
        "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }
