"""gpt-oss: attention sinks, HF expert layouts both ways, MXFP4 dequantization, config, sizes.

Logits on left/right-padded batches, gradients, greedy generation, KV-cache decoding and packing
run for gpt_oss through the ``family`` parametrisation of the other test files (conftest).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tune.models import (
    UnsupportedConfigError,
    active_param_count,
    build_from_hf_config,
    build_named_size,
    config_from_hf,
    convert_hf_to_native,
    convert_native_to_hf,
    dequantize_mxfp4,
    named_size_config,
    param_count,
    sink_attention,
)

# E2M1 code -> value, written out by hand (bit 3 is the sign).
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _eager_sink_attention(q, k, v, mask, scale, sinks):  # type: ignore[no-untyped-def]
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf"))
    sink = sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return probs @ v


def test_sink_attention_equals_softmax_with_a_sink_column() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 6, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 6, 8, generator=g, requires_grad=True)
    sinks = torch.randn(4, generator=g, requires_grad=True)
    pos = torch.arange(6)
    causal = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < 3)  # window 3
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    mask = causal[None, None] & keep[:, None, None, :]  # row 1 left-padded: its first 2 rows
    grad = torch.randn(2, 4, 6, 8, generator=g)
    results = []
    for fn in (sink_attention, _eager_sink_attention):
        out = fn(q, k, v, mask, 0.3, sinks)
        out.backward(grad)
        results.append([out.detach()] + [t.grad.clone() for t in (q, k, v, sinks)])  # type: ignore[union-attr]
        for t in (q, k, v, sinks):
            t.grad = None
    for got, want in zip(*results, strict=True):
        assert (got - want).abs().max().item() < 1e-6
    # A fully masked (padding) query row gives zeros, not NaN: the sink takes all the mass.
    assert torch.equal(results[0][0][1, :, :2], torch.zeros(4, 2, 8))
    # A sink of -inf weight is plain causal attention.
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    no_sink = sink_attention(q, k, v, None, 0.3, torch.full((4,), -1e4))
    assert (no_sink - plain).abs().max().item() < 1e-6


def test_module_names_and_layer_kinds(hf_and_native) -> None:
    _, native = hf_and_native("gpt_oss")
    layer0 = {k for k in native.state_dict() if k.startswith("layers.0.")}
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert layer0 == {
        *(f"layers.0.attn.{p}.{t}" for p in projections for t in ("weight", "bias")),
        "layers.0.attn.sinks",
        "layers.0.attn_norm.weight",
        "layers.0.mlp_norm.weight",
        "layers.0.mlp.router.weight",
        "layers.0.mlp.router.bias",
        "layers.0.mlp.experts.gate_up_proj",
        "layers.0.mlp.experts.gate_up_proj_bias",
        "layers.0.mlp.experts.down_proj",
        "layers.0.mlp.experts.down_proj_bias",
    }
    assert native.state_dict()["layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 64)
    assert native.state_dict()["layers.0.attn.sinks"].shape == (4,)
    assert [native.layers[i].attn.sliding_window for i in "01"] == [5, None]


def test_we_write_exactly_what_transformers_saves(hf_and_native, hf_saved_dir) -> None:
    hf, native = hf_and_native("gpt_oss")
    disk = load_file(hf_saved_dir("gpt_oss") / "model.safetensors")
    # transformers saves the experts stacked as [E, in, out] with gate/up columns interleaved
    gate_up = disk["model.layers.0.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (4, 64, 64)
    ours = native.state_dict()["layers.0.mlp.experts.gate_up_proj"]  # [E, 2I, D] gate then up
    assert torch.equal(ours[:, :32], gate_up[:, :, 0::2].transpose(1, 2))
    assert torch.equal(ours[:, 32:], gate_up[:, :, 1::2].transpose(1, 2))
    back = convert_native_to_hf(native.state_dict(), native)
    assert set(back) == set(disk) == set(hf.state_dict())
    for key, value in disk.items():
        assert torch.equal(back[key], value), key


def test_transformers_loads_what_we_write(hf_and_native, hf_saved_dir, batch, tmp_path) -> None:
    import transformers

    hf, native = hf_and_native("gpt_oss")
    state = convert_native_to_hf(native.state_dict(), native)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_saved_dir("gpt_oss") / "config.json").read_text())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens, mask, _ = batch([10, 6], length=10, seed=4, left=False)
    with torch.no_grad():
        want = hf(input_ids=tokens, attention_mask=mask).logits
        got = reloaded(input_ids=tokens, attention_mask=mask).logits
    assert torch.equal(got, want)


def _encode(codes: torch.Tensor) -> torch.Tensor:
    """[..., 32] codes -> [..., 16] bytes, even values in the low nibble."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)


def test_mxfp4_dequantization_is_exact() -> None:
    # One hand-checked block: byte 0x2F = codes (15, 2) = (-6, 1.0); scale 128 = 2 ** 1.
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0], blocks[0, 15] = 0x2F, 0x9C  # (12, 9) = (-2, -0.5)
    out = dequantize_mxfp4(blocks, torch.tensor([128], dtype=torch.uint8), torch.float32)
    assert out.shape == (32,)
    assert out[:2].tolist() == [-12.0, 2.0]
    assert out[30:].tolist() == [-4.0, -1.0]
    assert torch.count_nonzero(out[2:30]) == 0
    # Random codes and exponents over [E, rows, G, 16]: exact in float32 and bfloat16.
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (3, 5, 4, 32), generator=g)
    scales = torch.randint(100, 150, (3, 5, 4), generator=g, dtype=torch.int64)
    expected = torch.tensor(E2M1)[codes] * torch.pow(2.0, (scales - 127).float()).unsqueeze(-1)
    expected = expected.flatten(-2)  # [3, 5, 128]
    blocks, scales8 = _encode(codes), scales.to(torch.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        got = dequantize_mxfp4(blocks, scales8, dtype)
        assert got.dtype == dtype
        assert torch.equal(got.float(), expected)
    # transformers' dequantizer (CPU, no triton) returns the transpose [E, in, out].
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    theirs = convert_moe_packed_tensors(blocks, scales8, dtype=torch.float32)
    assert torch.equal(theirs.transpose(1, 2), expected)
    with pytest.raises(ValueError, match=re.escape("w_blocks: MXFP4 scales shape (3, 5)")):
        dequantize_mxfp4(blocks, scales8[..., 0], name="w_blocks")


def test_mxfp4_checkpoint_loads_with_equal_logits(hf_and_native, hf_saved_dir, batch) -> None:
    hf, native = hf_and_native("gpt_oss")
    disk = load_file(hf_saved_dir("gpt_oss") / "model.safetensors")
    g = torch.Generator().manual_seed(3)
    mxfp4, reference = dict(disk), copy.deepcopy(hf)
    params = dict(reference.named_parameters())
    # published layout: rows = output features (gate/up rows interleaved), 32-value blocks
    for layer in range(2):
        for proj, rows, cols in (("gate_up_proj", 64, 64), ("down_proj", 64, 32)):
            key = f"model.layers.{layer}.mlp.experts.{proj}"
            codes = torch.randint(0, 16, (4, rows, cols // 32, 32), generator=g)
            scales = torch.randint(121, 124, (4, rows, cols // 32), generator=g).to(torch.uint8)
            del mxfp4[key]
            mxfp4[key + "_blocks"], mxfp4[key + "_scales"] = _encode(codes), scales
            weight = dequantize_mxfp4(_encode(codes), scales, torch.float32)  # [E, out, in]
            with torch.no_grad():
                params[key].copy_(weight.transpose(1, 2))  # transformers' [E, in, out]
    converted = convert_hf_to_native(mxfp4, native)
    assert converted["layers.0.mlp.experts.gate_up_proj"].dtype == torch.bfloat16
    loaded = copy.deepcopy(native)
    loaded.load_state_dict(converted, strict=True)  # bf16 -> f32 copy is exact
    tokens, mask, positions = batch([12, 7], length=12, seed=6)
    with torch.no_grad():
        want = reference(input_ids=tokens, attention_mask=mask, position_ids=positions).logits
        got = loaded(tokens, positions=positions, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() < 1e-4
    del mxfp4["model.layers.1.mlp.experts.down_proj_scales"]
    with pytest.raises(ValueError, match="down_proj_blocks: MXFP4 blocks without"):
        convert_hf_to_native(mxfp4, native)


def test_config_defaults_and_errors(hf_saved_dir) -> None:
    config = json.loads((hf_saved_dir("gpt_oss") / "config.json").read_text())
    del config["layer_types"]  # transformers' default: sliding on even layers
    cfg = config_from_hf({**config, "num_hidden_layers": 4})
    assert cfg.layer_windows == (5, None, 5, None)
    assert (cfg.swiglu_alpha, cfg.swiglu_limit, cfg.norm_topk_prob) == (1.702, 0.5, True)
    published = {
        **named_size_config("gpt-oss-20b"),
        "quantization_config": {"quant_method": "mxfp4"},
    }
    assert config_from_hf(published).num_experts == 32
    with pytest.raises(UnsupportedConfigError, match="quantization_config: expected none or"):
        config_from_hf({**published, "quantization_config": {"quant_method": "fp8"}})
    with pytest.raises(UnsupportedConfigError, match="layer_types"):
        config_from_hf({**config, "layer_types": ["chunked_attention"] * 2})


def test_meta_build_then_init_weights(hf_saved_dir) -> None:
    config = json.loads((hf_saved_dir("gpt_oss") / "config.json").read_text())
    model = build_from_hf_config(config, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(std=0.02)
    state = model.state_dict()
    assert torch.equal(state["layers.1.mlp.experts.gate_up_proj_bias"], torch.zeros(4, 64))
    assert torch.equal(state["layers.1.mlp.router.bias"], torch.zeros(4))
    sinks = torch.cat([state[f"layers.{i}.attn.sinks"] for i in range(2)])
    assert torch.isfinite(sinks).all()
    assert 0 < sinks.abs().max().item() < 0.1  # normal(0, 0.02), not left empty
    tokens = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model(tokens)).all()


# Total parameters = transformers' count on the meta device (asserted below); active = used per
# token (4 of the routed experts). OpenAI's model card states 3.61B / 5.13B active: the same counts
# without the 201088 x 2880 input embedding (3,608,307,264 and 5,132,849,472).
SIZES = {
    "gpt-oss-20b": (20_914_757_184, 4_187_440_704),
    "gpt-oss-120b": (116_829_156_672, 5_711_982_912),
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_named_size_counts_equal_transformers_on_meta(name: str) -> None:
    import transformers

    ours = build_named_size(name)
    with torch.device("meta"):
        reference = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**named_size_config(name))
        )
    assert param_count(ours) == sum(p.numel() for p in reference.parameters()) == SIZES[name][0]
    assert active_param_count(ours) == SIZES[name][1]
