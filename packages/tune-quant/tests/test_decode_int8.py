"""int8 decode Linears: kernel == dequantized reference, greedy tokens, module swap, errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from tune.quant import Int8DecodeLinear, quantize_for_decode
from tune.quant.int8_cpu_kernel import int8_kernel_matmul, load_int8_kernel


def _reference(model: nn.Module) -> nn.Module:
    """``model`` with every Int8DecodeLinear replaced by its dequantized nn.Linear."""
    ref = copy.deepcopy(model)
    for name, module in list(ref.named_modules()):
        if isinstance(module, Int8DecodeLinear):
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, child, module.to_linear())
    return ref


def _greedy(model: nn.Module, prompt: torch.Tensor, steps: int) -> list[list[int]]:
    tokens = prompt
    with torch.inference_mode():
        for _ in range(steps):
            nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            tokens = torch.cat([tokens, nxt], dim=1)
    return tokens[:, prompt.shape[1] :].tolist()


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("in_features", [64, 100])  # 100: the scalar tail after 8-wide steps
def test_kernel_equals_dequantized_linear(rows: int, in_features: int) -> None:
    kernel = load_int8_kernel()
    assert kernel is not None  # a C compiler is part of the test environment
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 37, bias=True)  # 37: rows past the 4-row tiles
    q = Int8DecodeLinear.from_linear(linear)
    x = torch.randn(rows, in_features)
    expected = q.to_linear()(x)
    got = q(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    raw = int8_kernel_matmul(kernel, x, q.weight_int8, q.scale)
    torch.testing.assert_close(raw + linear.bias.detach(), expected, rtol=1e-5, atol=1e-5)
    # Weight-only int8 with one scale per row: within half a step of the float weight.
    step = linear.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    assert ((q.dequantized_weight() - linear.weight.detach()).abs() <= step / 2 + 1e-7).all()


def test_prefill_rows_use_the_dequantized_matmul() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(64, 48, bias=False)
    q = Int8DecodeLinear.from_linear(linear, max_decode_rows=2)
    x = torch.randn(2, 5, 64)  # 10 rows > 2: float matmul of the dequantized weight
    torch.testing.assert_close(q(x), q.to_linear()(x), rtol=0, atol=0)


def test_greedy_tokens_equal_the_dequantized_reference_and_near_fp32(make_lm) -> None:
    fp32 = make_lm(seed=3)
    model = copy.deepcopy(fp32)
    swapped = quantize_for_decode(model)
    assert "output" in swapped
    assert "layers.1.mlp.down_proj" in swapped
    assert len(swapped) == 2 * 7 + 1
    prompt = torch.randint(0, 256, (2, 3), generator=torch.Generator().manual_seed(0))
    # 2 x (3..8) rows per forward: every step runs the int8 kernel.
    got = _greedy(model, prompt, steps=6)
    assert got == _greedy(_reference(model), prompt, steps=6)
    with torch.inference_mode():
        err = (model(prompt) - fp32(prompt)).abs().max()
        scale = fp32(prompt).abs().max()
    assert err < 0.01 * scale  # int8 weights: logits within 1% of their range
    assert got == _greedy(fp32, prompt, steps=6)  # this tiny model: same greedy tokens as fp32


def test_tied_head_keeps_the_float_embedding(make_lm) -> None:
    model = make_lm()
    model.output.weight = model.tok_embeddings.weight
    quantize_for_decode(model, include=["output"])
    assert isinstance(model.output, Int8DecodeLinear)
    assert model.tok_embeddings.weight.dtype == torch.float32
    assert isinstance(model.layers["0"].attn.q_proj, nn.Linear)


def test_errors_name_the_problem(make_lm) -> None:
    with pytest.raises(ValueError, match="unknown decode scheme 'int4'"):
        quantize_for_decode(make_lm(), "int4")
    model = make_lm()
    model.output.weight = nn.Parameter(model.output.weight.detach().to(torch.int8), False)
    with pytest.raises(ValueError, match=r"module 'output'.*plain float weight"):
        quantize_for_decode(model)
    assert isinstance(model.layers["0"].attn.q_proj, nn.Linear)  # nothing was swapped


def test_no_kernel_from_a_shared_directory_falls_back_to_float(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from tune.quant import int8_cpu_kernel

    monkeypatch.setattr(int8_cpu_kernel, "_tried", False)
    monkeypatch.setattr(int8_cpu_kernel, "_kernel", None)
    monkeypatch.setattr(int8_cpu_kernel.tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"tune-quant-kernels-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)  # others could plant a library there: never load from it
    assert int8_cpu_kernel.load_int8_kernel() is None
    assert "not a private directory" in caplog.text
    torch.manual_seed(2)
    q = Int8DecodeLinear.from_linear(nn.Linear(64, 16))
    x = torch.randn(3, 64)
    torch.testing.assert_close(q(x), q.to_linear()(x), rtol=1e-5, atol=1e-5)
