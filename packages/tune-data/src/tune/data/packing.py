"""On-the-fly packing of tokenized samples into `max_seq_len` bins from a small buffer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tune.data.masking import IGNORE_INDEX

PACKING_STRATEGIES = ("best_fit", "greedy")


def select_for_pack(lengths: Sequence[int], max_seq_len: int, strategy: str) -> list[int]:
    """Pick buffer entries for the next pack; returns their buffer indices in pack order.

    `best_fit` starts with the longest entry and keeps adding the longest one that still fits;
    `greedy` takes entries in arrival order while they fit and stops at the first that does not.

    Args:
        lengths: token counts of the buffered samples, in arrival order (each <= max_seq_len).
        max_seq_len: the bin size.
        strategy: `best_fit` or `greedy`.
    """
    if strategy == "greedy":
        chosen, room = [], max_seq_len
        for i, length in enumerate(lengths):
            if length > room:
                break
            chosen.append(i)
            room -= length
        return chosen
    if strategy != "best_fit":
        raise ValueError(f"packing strategy must be one of {PACKING_STRATEGIES}, got {strategy!r}")
    # Longest first; ties keep arrival order so the result is deterministic.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chosen, room = [], max_seq_len
    for i in order:
        if lengths[i] <= room:
            chosen.append(i)
            room -= lengths[i]
            if room == 0:
                break
    return chosen


def concat_documents(samples: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Concatenate samples into one packed row with per-document positions and ids.

    Args:
        samples: `{"tokens", "labels"}` dicts.

    Returns:
        `tokens`, `labels`, `positions` (restart at 0 per document), `document_ids` (0, 1, ...).
    """
    tokens: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    document_ids: list[int] = []
    for doc, sample in enumerate(samples):
        n = len(sample["tokens"])
        tokens.extend(sample["tokens"])
        labels.extend(sample["labels"])
        positions.extend(range(n))
        document_ids.extend([doc] * n)
    return {
        "tokens": tokens,
        "labels": labels,
        "positions": positions,
        "document_ids": document_ids,
    }


def pad_pack(pack: dict[str, list[int]], max_seq_len: int, pad_id: int) -> dict[str, list[int]]:
    """Fill a packed row to `max_seq_len`; the padding is a document of its own, never trained.

    Args:
        pack: output of `concat_documents`.
        max_seq_len: the row length.
        pad_id: token id used for padding.
    """
    n = len(pack["tokens"])
    extra = max_seq_len - n
    if extra < 0:
        raise ValueError(f"pack has {n} tokens > max_seq_len={max_seq_len}")
    if extra == 0:
        return pack
    next_doc = pack["document_ids"][-1] + 1 if n else 0
    return {
        "tokens": pack["tokens"] + [pad_id] * extra,
        "labels": pack["labels"] + [IGNORE_INDEX] * extra,
        "positions": pack["positions"] + list(range(extra)),
        "document_ids": pack["document_ids"] + [next_doc] * extra,
    }


def pack_stream(
    samples: Iterable[dict[str, Any]],
    max_seq_len: int,
    strategy: str = "best_fit",
    buffer_size: int = 64,
) -> Iterator[dict[str, list[int]]]:
    """Pack a stream of samples lazily; a convenience for use outside `StreamingLoader`.

    Args:
        samples: `{"tokens", "labels"}` dicts, each at most `max_seq_len` tokens.
        max_seq_len: the bin size.
        strategy: `best_fit` or `greedy`.
        buffer_size: samples held back to choose from (greedy uses it as a read-ahead).
    """
    buffer: list[dict[str, Any]] = []
    iterator = iter(samples)
    exhausted = False
    while True:
        while not exhausted and len(buffer) < buffer_size:
            try:
                sample = next(iterator)
            except StopIteration:
                exhausted = True
                break
            if len(sample["tokens"]) > max_seq_len:
                raise ValueError(
                    f"sample of {len(sample['tokens'])} tokens > max_seq_len={max_seq_len}"
                )
            buffer.append(sample)
        if not buffer:
            return
        chosen = select_for_pack([len(s["tokens"]) for s in buffer], max_seq_len, strategy)
        yield concat_documents([buffer[i] for i in chosen])
        taken = set(chosen)
        buffer = [s for i, s in enumerate(buffer) if i not in taken]
