"""Post-training quantization: accuracy per scheme, module selection, parity with torchao itself."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torchao.quantization import quantize_

from tune.quant import SCHEMES, get_scheme, is_quantized_weight, quantize_model

# Relative output error ||y_q - y|| / ||y|| of the tiny LM's logits. nn.Linear's init draws weights
# from U(-a, a), so a row's absmax is ~a and its rms a/sqrt(3); rounding to a step s leaves an rms
# error of s/sqrt(12). Per weight element that gives:
#   int8 per-row symmetric, s = a/127.5:        (a/127.5)/sqrt(12) / (a/sqrt(3)) = 1/255 ~ 0.4 %
#   + int8 per-token activations (absmax/rms ~ 3):                                     ~ 0.7 % more
#   int4 group-32 asymmetric, s = range/15 ~ 1.9a/15:                                  ~ 6.3 %
#   int4 group-32 symmetric, s = a/7.5, + int8 activations:                            ~ 6.7-7.2 %
# The errors are independent across weights, so the logits see about the same relative error
# (measured: 0.43 %, 0.79 %, 6.5 %, 7.3 %). Bounds are ~2x the expectation, well below the error
# of the next-coarser scheme, so a wrong config (e.g. int4 where int8 was asked) fails.
ERROR_BOUNDS = {
    "int8_weight_only": 1e-2,
    "int8_dynamic_int8_weight": 2e-2,
    "int4_weight_only": 0.1,
    "int8_dynamic_int4_weight": 0.12,
}
LOWER_BOUNDS = {"int4_weight_only": 2e-2, "int8_dynamic_int4_weight": 2e-2}


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).norm() / ref.norm()).item()


def test_every_scheme_has_a_stated_bound() -> None:
    assert set(ERROR_BOUNDS) == set(SCHEMES)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_scheme_error_within_bound(scheme: str, tokens: torch.Tensor, make_lm) -> None:
    model = make_lm()
    with torch.no_grad():
        ref = model(tokens)
        quantized = quantize_model(model, scheme)
        out = model(tokens)
    assert len(quantized) == 2 * 7 + 1  # 7 Linear per block + output
    err = _rel_err(out, ref)
    assert err < ERROR_BOUNDS[scheme], f"{scheme}: relative error {err:.4f}"
    # int4 must really be coarser than int8: it cannot be float or int8 in disguise.
    assert err > LOWER_BOUNDS.get(scheme, 1e-3), (
        f"{scheme}: relative error {err:.2e} is suspiciously small"
    )
    for fqn in quantized:
        assert is_quantized_weight(model.get_submodule(fqn).weight), fqn


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_matches_torchao_quantize_with_the_scheme_config(
    scheme: str, tokens: torch.Tensor, make_lm
) -> None:
    ours, theirs = make_lm(), make_lm()
    quantize_model(ours, scheme)
    quantize_(theirs, get_scheme(scheme).devices["cpu"].ptq_config())
    with torch.no_grad():
        assert torch.equal(ours(tokens), theirs(tokens))


def test_include_and_exclude_patterns_choose_modules(tokens: torch.Tensor, make_lm) -> None:
    model = make_lm()
    chosen = quantize_model(
        model, "int8_weight_only", include=["layers.*.mlp.*"], exclude=["layers.1.*"]
    )
    assert chosen == ["layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj"]
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert is_quantized_weight(module.weight) == (fqn in chosen), fqn


def test_callable_filter_and_untouched_float_modules(tokens: torch.Tensor, make_lm) -> None:
    model = make_lm()
    float_model = copy.deepcopy(model)
    chosen = quantize_model(
        model, "int4_weight_only", include=lambda m, fqn: fqn.endswith("o_proj")
    )
    assert chosen == ["layers.0.attn.o_proj", "layers.1.attn.o_proj"]
    for name, param in float_model.named_parameters():
        if not any(name.startswith(c) for c in chosen):
            assert torch.equal(model.get_parameter(name), param), name


def test_tied_output_is_untied_and_embedding_kept(make_lm, caplog) -> None:
    model = make_lm()
    model.output.weight = model.tok_embeddings.weight
    embedding = model.tok_embeddings.weight.detach().clone()
    with caplog.at_level("WARNING", logger="tune.quant.ptq"):
        quantize_model(model, "int8_weight_only", include=["output"])
    assert "output.weight is shared with ['tok_embeddings.weight']" in caplog.text
    assert is_quantized_weight(model.output.weight)
    assert type(model.tok_embeddings.weight.data) is torch.Tensor
    assert torch.equal(model.tok_embeddings.weight, embedding)


def test_int8_weight_matches_hand_computed_per_row_quantization() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 8, bias=False)
    w = lin.weight.detach().clone()
    quantize_model(nn.Sequential(lin), "int8_weight_only")
    # torchao's symmetric mapping spreads absmax over half the int8 range: (127 - (-128)) / 2.
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5
    # Multiplying by the reciprocal (as torchao does) matters at the absmax, where w/scale = 127.5.
    expected = torch.clamp(torch.round(w * (1.0 / scale)), -128, 127) * scale
    x = torch.eye(64)
    got = lin(x).T  # columns of the identity recover the dequantized weight
    assert math.isclose((got - expected).abs().max().item(), 0.0, abs_tol=1e-7), (
        "int8_weight_only is not symmetric per-row absmax/127.5"
    )


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_scheme_on_cuda_bfloat16(scheme: str, tokens: torch.Tensor, make_lm, tmp_path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA schemes need a GPU; this machine has none")
    from tune.quant import load_quantized, save_quantized

    model = make_lm().to("cuda", torch.bfloat16)
    tokens = tokens.cuda()
    with torch.no_grad():
        ref = model(tokens).float()
        quantize_model(model, scheme, exclude=["output"])
        out = model(tokens)
    # bfloat16 itself adds ~0.4 % relative error on top of the scheme's own.
    assert _rel_err(out.float(), ref) < ERROR_BOUNDS[scheme] + 1e-2
    save_quantized(model, tmp_path / "q.pt")
    with torch.device("meta"):
        skeleton = make_lm()
    load_quantized(skeleton, tmp_path / "q.pt", device="cuda")
    with torch.no_grad():
        assert torch.equal(skeleton(tokens), out)


# Bytes of one quantized Linear(1024 -> 1024), from each format's tensors:
#   int8: int8 codes + fp32 scale and int8 zero point per row
#   int4 (CPU tinygemm): two codes per byte + fp32 (scale, zero) per group of 32
#   int8 + int4: int4 codes stored unpacked in int8 + fp32 scale and int8 zero per group of 32
_N = 1024
EXPECTED_BYTES = {
    "int8_weight_only": _N * _N + _N * 4 + _N,
    "int8_dynamic_int8_weight": _N * _N + _N * 4 + _N,
    "int4_weight_only": _N * _N // 2 + (_N // 32) * _N * 2 * 4,
    "int8_dynamic_int4_weight": _N * _N + _N * (_N // 32) * (4 + 1),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_measured_weight_memory_matches_the_format(scheme: str) -> None:
    from tune.quant import model_storage_bytes, tensor_storage_bytes

    model = nn.Sequential(nn.Linear(_N, _N, bias=False))
    assert model_storage_bytes(model) == 4 * _N * _N
    quantize_model(model, scheme)
    assert tensor_storage_bytes(model[0].weight) == EXPECTED_BYTES[scheme]
    assert model_storage_bytes(model) == EXPECTED_BYTES[scheme]
