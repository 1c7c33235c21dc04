"""``data.padding_free``: when unpacked micro-batches are trained on their real tokens only."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

import torch

from tune.data import remove_padding

logger = logging.getLogger(__name__)


def resolve_padding_free(
    setting: bool | None,
    *,
    device: torch.device,
    packing: bool,
    compile: bool,
    tp_size: int,
) -> bool:
    """Whether to lay each padded micro-batch end to end (``tune.data.remove_padding``).

    ``None`` (auto) turns it on for CPU training without ``torch.compile`` or tensor parallelism:
    there the document-masked attention runs eagerly on any row length. On CUDA, documents go
    through FlexAttention, compiled for each distinct length, so auto leaves it off there (and a
    compiled model would recompile for each length too). Packed data has no padding to remove.
    """
    if packing:
        return False
    if setting is None:
        setting = device.type == "cpu" and not compile and tp_size == 1
        logger.info("data.padding_free (auto): %s", "on" if setting else "off")
    elif setting and device.type == "cuda":
        logger.warning(
            "data.padding_free=true on CUDA: FlexAttention compiles once per distinct row "
            "length; expect recompilations until the lengths repeat"
        )
    return setting


def padding_free_batch(batch: Mapping[str, torch.Tensor], enabled: bool) -> dict[str, torch.Tensor]:
    """The batch itself, or its real tokens as one packed row [1, R] when ``enabled``."""
    if not enabled or "attention_mask" not in batch or "document_ids" in batch:
        return dict(batch)
    return remove_padding(batch)


def padding_free_batches(
    batches: Iterable[Mapping[str, torch.Tensor]], enabled: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """``padding_free_batch`` over an iterable (validation batches)."""
    for batch in batches:
        yield padding_free_batch(batch, enabled)
