"""Context parallelism: zig-zag sharding round trips (one process), and ring attention on an
8192-token sequence at CP=2 and CP=4 (gloo) equal to one process, plain causal and packed
documents, with RoPE positions; per-rank saved activations fall with cp.

The distributed scenario (dist_cp_scenarios.py) runs inside the shared 2- and 4-rank launches.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

import tune.dist as td

logger = logging.getLogger(__name__)

PARITY = 1e-5  # float32 loss and every gradient vs one process


@pytest.mark.parametrize("cp", [1, 2, 4])
def test_zigzag_shard_round_trip(cp: int) -> None:
    x = torch.arange(2 * 16 * 3).view(2, 16, 3)  # [B, T, ...]
    shards = [td.zigzag_shard(x, cp, r) for r in range(cp)]
    assert all(s.shape == (2, 16 // cp, 3) for s in shards)
    assert torch.equal(td.zigzag_unshard(shards), x)
    # Rank r holds chunks r and 2cp-1-r: the global indices say so, and match the shard.
    chunk = 16 // (2 * cp)
    for r, shard in enumerate(shards):
        idx = td.zigzag_indices(16, cp, r)
        assert idx[0].item() == r * chunk
        assert idx[-1].item() == 16 - r * chunk - 1
        assert torch.equal(shard, x[:, idx])
    # Every rank does the same causal work: the sum of (index + 1) over its tokens.
    work = [int((td.zigzag_indices(16, cp, r) + 1).sum()) for r in range(cp)]
    assert len(set(work)) == 1, work


def test_zigzag_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 2 \\* cp_size = 8"):
        td.zigzag_shard(torch.zeros(1, 12), 4, 0)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        td.zigzag_chunks(2, 2)


def test_context_parallel_attention_needs_a_hook() -> None:
    with (
        pytest.raises(ValueError, match="no module with an `attention_fn`"),
        td.context_parallel_attention(torch.nn.Linear(2, 2)),
    ):
        pass


@pytest.mark.parametrize("explicit", [False, True])
def test_blocks_merged_by_lse_equal_full_attention(explicit: bool) -> None:
    """Two key blocks (one causal diagonal, one with a document mask that hides whole rows),
    merged by log-sum-exp, equal full attention; so do their backward shares given the merged
    output. ``explicit`` is the path used off CPU; the CPU flash kernel otherwise."""
    from tune.dist.context_parallel import _block, _block_backward, _doc_bias

    g = torch.Generator().manual_seed(0)
    B, H, t, D = 1, 2, 6, 4
    q, k, v = (torch.randn(B, H, 2 * t, D, generator=g, dtype=torch.float64) for _ in range(3))
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]])
    full_in = [x.clone().requires_grad_() for x in (q, k, v)]
    allowed = (docs[:, None, :, None] == docs[:, None, None, :]) & torch.ones(12, 12).tril().bool()
    ref = torch.nn.functional.scaled_dot_product_attention(*full_in, attn_mask=allowed, scale=0.5)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)
    qs = q[:, :, t:]  # the second half's queries see keys of both halves
    blocks = []
    for keys, diag in ((slice(0, t), False), (slice(t, 2 * t), True)):
        bias, visible = _doc_bias(docs[:, t:], docs[:, keys], diag, q.dtype)
        assert visible
        out, lse = _block(qs, k[:, :, keys], v[:, :, keys], diag and bias is None, bias, 0.5,
                          explicit)  # fmt: skip
        blocks.append((keys, diag, bias, out, lse))
    lse = torch.logaddexp(blocks[0][4], blocks[1][4])
    out = sum(torch.exp(b[4] - lse).nan_to_num(0.0)[..., None] * b[3] for b in blocks)
    torch.testing.assert_close(out, ref[:, :, t:].detach())
    dq = torch.zeros_like(qs)
    for keys, diag, bias, _, _ in blocks:
        gq, gk, gv = _block_backward(grad[:, :, t:], qs, k[:, :, keys], v[:, :, keys], out, lse,
                                     diag and bias is None, bias, 0.5, explicit)  # fmt: skip
        dq += gq
        if keys.start == t:  # the second half's keys are seen by the second half's queries only
            torch.testing.assert_close(gk, full_in[1].grad[:, :, keys])
            torch.testing.assert_close(gv, full_in[2].grad[:, :, keys])
    torch.testing.assert_close(dq, full_in[0].grad[:, :, t:])


def _check(result: dict[str, Any], cases: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for rank_result in result["ranks"]:
        for case in cases:
            if case in rank_result:
                found[case] = rank_result[case]
    assert sorted(found) == sorted(cases), found
    for case, r in found.items():
        assert r["loss_err"] < PARITY, (case, r)
        assert r["grad_err"] < PARITY < r["grad_max"] * 1e2, (case, r)
    return found


@pytest.mark.distributed
def test_ring_attention_cp2_cp4_equal_one_process(
    two_rank: dict[str, Any], four_rank: dict[str, Any]
) -> None:
    two = _check(two_rank["cp"], ["causal", "packed", "packed_fsdp"])
    _check(four_rank["cp"], ["causal", "packed"])
    # Per-rank saved activations (bytes) of the forward fall with cp.
    saved = {
        1: two["causal"]["ref_saved_bytes"],
        2: two_rank["cp"]["rank0"]["saved_bytes"]["causal"],
        4: four_rank["cp"]["rank0"]["saved_bytes"]["causal"],
    }
    logger.info("saved activation bytes per rank by cp_size: %s", saved)
    assert saved[4] < 0.6 * saved[2] < 0.6 * 0.6 * saved[1], saved
