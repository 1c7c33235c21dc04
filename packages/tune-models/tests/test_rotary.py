"""Rotary frequencies equal transformers' for every supported scaling."""

from __future__ import annotations

import pytest
import torch

from tune.models import RopeSpec, RotaryEmbedding, apply_rotary, config_from_hf

ROPES = {
    "llama3": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "linear": {"rope_type": "linear", "factor": 8.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    "yarn_mscale": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 2048, "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16.0, "truncate": False},
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(ROPES))
def test_inverse_frequencies_match_transformers(kind: str) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {**ROPES[kind], "rope_theta": 500000.0}
    hf_config = LlamaConfig(
        hidden_size=256,
        num_attention_heads=2,
        max_position_embeddings=16384,
        rope_parameters=params,
    )
    expected, expected_scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_config, "cpu")
    ours = config_from_hf(hf_config.to_dict())
    rope = RotaryEmbedding(ours.rope, 128, 16384)
    torch.testing.assert_close(rope.inv_freq, expected, atol=0, rtol=1e-6)
    assert rope.attention_scaling == pytest.approx(expected_scale, rel=1e-12)


def test_rotation_is_relative_and_partial_leaves_the_tail() -> None:
    rope = RotaryEmbedding(RopeSpec(theta=10000.0), rotary_dim=8, max_position_embeddings=64)
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        rq, rk = apply_rotary(q, cq, sq), apply_rotary(k, ck, sk)
        assert torch.equal(rq[..., 8:], q[..., 8:])  # dims past rotary_dim are untouched
        return (rq[..., :8] * rk[..., :8]).sum()

    torch.testing.assert_close(score(7, 3), score(24, 20), atol=1e-5, rtol=0)
    assert (score(7, 3) - score(7, 5)).abs() > 1e-4
