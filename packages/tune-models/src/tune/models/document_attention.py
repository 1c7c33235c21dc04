"""Causal attention within packed documents, one document per batch row (CPU training).

A packed row holds several documents; attention with a dense block-causal mask [B, 1, T, T]
costs T² per row however short the documents are, and the CPU kernels cannot skip the masked
blocks. Here each document is gathered into a row of its own (padded at the end to the longest
document of its length group), attended with plain causal SDPA, and scattered back: the cost is the sum of the
documents' squared lengths (documents are bucketed by length, so a few long ones do not pad all
the short ones). Padding slots sit after every real query of their row, so causal
attention never lets a real token see them; their outputs are dropped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Cost of one more SDPA call, in units of attention cells (query-key pairs): a group of
# documents must save at least this many padded cells to be split off.
_GROUP_OVERHEAD_CELLS = 4096


@dataclass(frozen=True)
class DocumentGroup:
    """Documents of similar length attended in one call, each padded to the group's longest.

    Args:
        gather: [S * L] int64 flat token index (into B * T) of each slot of S documents of
            (padded) length L; a padding slot repeats its document's last token.
        num_docs: S.
        max_len: L.
    """

    gather: torch.Tensor
    num_docs: int
    max_len: int


@dataclass(frozen=True)
class DocumentLayout:
    """Where each document of a packed batch sits, as gather indices.

    Args:
        groups: documents bucketed by length; their slots are numbered group after group.
        gather: [slots] int64 the groups' gather indices, concatenated.
        real_slots: [B * T] int64 slot of each token, in token order.
        batch: B.
        seq_len: T.
    """

    groups: tuple[DocumentGroup, ...]
    gather: torch.Tensor
    real_slots: torch.Tensor
    batch: int
    seq_len: int

    @property
    def num_docs(self) -> int:
        """All documents of the batch."""
        return sum(group.num_docs for group in self.groups)

    @property
    def max_len(self) -> int:
        """The longest document."""
        return max(group.max_len for group in self.groups)


def _group_bounds(sorted_lengths: torch.Tensor) -> list[int]:
    """Split points of ascending lengths [S] into up to 3 groups of least padded cost.

    A group of n documents whose longest has L tokens costs n * L² cells plus an overhead per call.
    """
    S = sorted_lengths.numel()
    sq = sorted_lengths.cpu().double() ** 2  # (S,)
    cut = torch.arange(S + 1, dtype=torch.float64)  # candidate split points 0..S
    last_sq = torch.cat((sq.new_zeros(1), sq))  # (S+1,) squared length of doc cut-1
    i, j = cut[:, None], cut[None, :]  # first group [0, i), second [i, j), third [j, S)
    first = i * last_sq[:, None] + (i > 0) * _GROUP_OVERHEAD_CELLS
    second = (j - i).clamp(min=0) * last_sq[None, :] + (j > i) * _GROUP_OVERHEAD_CELLS
    third = (S - j) * sq[-1] + (j < S) * _GROUP_OVERHEAD_CELLS
    cost = (first + second + third).masked_fill(j < i, float("inf"))  # (S+1, S+1)
    a, b = divmod(int(cost.argmin()), S + 1)
    return sorted({0, a, b, S})  # empty groups dropped


def document_layout(document_ids: torch.Tensor) -> DocumentLayout | None:
    """The layout of ``document_ids`` [B, T], or None when a dense mask is the cheaper choice.

    Each run of equal consecutive ids in a row is a document. Documents are bucketed by length
    (up to three groups) so that short ones are not padded to the longest of the batch. None when
    an id comes back after another one in the same row (the dense mask would join those runs), or
    when the padded documents cost more than the dense mask's B * T² (one long document among
    many short ones; causal SDPA does about half of n * L² per group, the masked kernel all of
    B * T²).

    Args:
        document_ids: [B, T] document index of every token.
    """
    B, T = document_ids.shape
    new_run = torch.ones_like(document_ids, dtype=torch.bool)
    new_run[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]  # (B, T)
    starts = new_run.flatten().nonzero().squeeze(1)  # (S,) flat index of each document's start
    num_docs = starts.numel()
    distinct = sum(int(row.unique().numel()) for row in document_ids)
    if distinct != num_docs:
        return None  # an id split over several runs
    ends = torch.cat((starts[1:], starts.new_tensor([B * T])))
    lengths = ends - starts  # (S,); runs never cross rows: every row starts a run
    sorted_lengths, order = torch.sort(lengths, stable=True)  # (S,), (S,)
    bounds = _group_bounds(sorted_lengths)
    spans = list(itertools.pairwise(bounds))
    maxima = [int(sorted_lengths[b - 1]) for _, b in spans]
    if sum((b - a) * m * m for (a, b), m in zip(spans, maxima, strict=True)) > B * T * T:
        return None
    groups = []
    slot_base = torch.empty_like(starts)  # (S,) first slot of each document
    offset = 0
    for (a, b), max_len in zip(spans, maxima, strict=True):
        docs = order[a:b]  # (n,) documents of this group, shortest first
        offsets = torch.arange(max_len, device=document_ids.device)  # (L,)
        within = torch.minimum(offsets[None, :], (lengths[docs] - 1)[:, None])  # (n, L)
        gather = (starts[docs][:, None] + within).flatten()  # (n * L,)
        slot_base[docs] = offset + torch.arange(b - a, device=starts.device) * max_len
        groups.append(DocumentGroup(gather, b - a, max_len))
        offset += (b - a) * max_len
    doc_of_token = torch.cumsum(new_run.flatten().long(), 0) - 1  # (B * T,)
    token_offset = torch.arange(B * T, device=document_ids.device) - starts[doc_of_token]
    real_slots = slot_base[doc_of_token] + token_offset  # (B * T,)
    gather = torch.cat([group.gather for group in groups])  # (slots,)
    return DocumentLayout(tuple(groups), gather, real_slots, B, T)


def document_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: DocumentLayout, *, scale: float
) -> torch.Tensor:
    """Causal attention of each document with itself only.

    Args:
        q: [B, H, T, D] queries.
        k: [B, H_kv, T, D] keys.
        v: [B, H_kv, T, D] values.
        layout: from ``document_layout`` on the batch's document ids.
        scale: q·k multiplier.

    Returns:
        [B, H, T, D].
    """
    B, H, T, D = q.shape
    # One gather per tensor, split per group: the backward then pays one scatter, not one a group.
    sizes = [group.num_docs * group.max_len for group in layout.groups]
    slots_of = [
        x.transpose(1, 2).reshape(B * T, -1).index_select(0, layout.gather).split(sizes)
        for x in (q, k, v)
    ]  # per tensor: per group (S*L, h*D)
    outs = []
    for i, group in enumerate(layout.groups):
        S, L = group.num_docs, group.max_len
        q_doc, k_doc, v_doc = (
            slots[i].view(S, L, -1, D).transpose(1, 2) for slots in slots_of
        )  # (S, h, L, D) each
        out = F.scaled_dot_product_attention(
            q_doc, k_doc, v_doc, is_causal=True, scale=scale, enable_gqa=True
        )  # (S, H, L, D)
        outs.append(out.transpose(1, 2).reshape(S * L, H * D))  # (S*L, H*D)
    slots = outs[0] if len(outs) == 1 else torch.cat(outs)  # (slots, H*D)
    tokens = slots.index_select(0, layout.real_slots)  # (B*T, H*D)
    return tokens.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
