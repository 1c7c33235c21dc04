"""Token cross-entropy, its chunked form and the fused projection + CE agree with torch's CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tune.train import (
    chunked_cross_entropy,
    cross_entropy,
    fused_linear_cross_entropy,
    sequence_logprobs,
    sequence_logprobs_from_hidden,
    token_logprobs,
)


def _case(n: int = 70, d: int = 24, v: int = 96, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype)
    weight = torch.randn(v, d, generator=g, dtype=dtype) * 0.5
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100  # prompt / padding positions
    return hidden, weight, labels


def _reference(hidden, weight, labels, softcap=None):
    logits = hidden @ weight.t()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def test_cross_entropy_is_a_sum_with_the_real_token_count() -> None:
    hidden, weight, labels = _case()
    logits = hidden @ weight.t()
    out = cross_entropy(logits, labels)
    assert int(out.num_tokens) == int((labels != -100).sum()) == 56
    mean = F.cross_entropy(logits, labels, ignore_index=-100)
    torch.testing.assert_close(out.mean(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss_sum, mean * 56, rtol=1e-6, atol=0)


def test_chunked_cross_entropy_matches_in_value_and_gradient() -> None:
    hidden, weight, labels = _case()
    logits = (hidden @ weight.t()).reshape(7, 10, -1).requires_grad_()
    ref = cross_entropy(logits, labels.reshape(7, 10), softcap=5.0)
    (ref_grad,) = torch.autograd.grad(ref.loss_sum, logits)
    out = chunked_cross_entropy(logits, labels.reshape(7, 10), chunk_size=16, softcap=5.0)
    (grad,) = torch.autograd.grad(out.loss_sum, logits)
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert int(out.num_tokens) == int(ref.num_tokens)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk_size", [16, 70, 1000])
def test_fused_linear_ce_equals_plain_ce_in_value_and_grads(softcap, chunk_size) -> None:
    hidden, weight, labels = _case()
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = _reference(h_ref, w_ref, labels, softcap)
    ref.backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fused_linear_cross_entropy(h, w, labels, chunk_size=chunk_size, softcap=softcap)
    out.loss_sum.backward()
    assert _rel(out.loss_sum.detach(), ref.detach()) < 1e-5
    assert _rel(h.grad, h_ref.grad) < 1e-5
    assert _rel(w.grad, w_ref.grad) < 1e-5
    assert int(out.num_tokens) == 56
    # ignored rows get no gradient at all
    assert torch.count_nonzero(h.grad[labels == -100]) == 0


def test_fused_linear_ce_scales_with_upstream_grad_batched_shape_and_frozen_weight() -> None:
    hidden, weight, labels = _case(n=60)
    h3 = hidden.reshape(3, 20, -1).clone().requires_grad_()
    frozen = weight.clone()  # no grad: a frozen LoRA base or a frozen head
    out = fused_linear_cross_entropy(h3, frozen, labels.reshape(3, 20), chunk_size=7)
    (out.loss_sum * 0.25).backward()
    h_ref = hidden.clone().requires_grad_()
    (_reference(h_ref, frozen, labels) * 0.25).backward()
    assert _rel(h3.grad.reshape(60, -1), h_ref.grad) < 1e-5
    with torch.no_grad():
        value = fused_linear_cross_entropy(hidden, weight, labels).loss_sum
    assert _rel(value, _reference(hidden, weight, labels)) < 1e-5


def test_fused_linear_ce_with_tied_embedding_weight_accumulates_both_grads() -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(32, 8)
    tokens = torch.randint(0, 32, (2, 9))
    labels = torch.randint(0, 32, (2, 9))
    h = emb(tokens) * 2
    fused_linear_cross_entropy(h, emb.weight, labels, chunk_size=5).loss_sum.backward()
    fused_grad = emb.weight.grad.clone()
    emb.weight.grad = None
    h = emb(tokens) * 2
    F.cross_entropy(
        (h @ emb.weight.t()).reshape(-1, 32), labels.reshape(-1), reduction="sum"
    ).backward()
    assert _rel(fused_grad, emb.weight.grad) < 1e-5


def test_fused_linear_ce_with_every_label_ignored_is_zero_with_zero_grads() -> None:
    hidden, weight, _ = _case(n=12)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fused_linear_cross_entropy(h, w, torch.full((12,), -100), chunk_size=5)
    out.loss_sum.backward()
    assert out.loss_sum.item() == 0.0
    assert int(out.num_tokens) == 0
    assert torch.count_nonzero(h.grad) == 0
    assert torch.count_nonzero(w.grad) == 0


def test_fused_linear_ce_rejects_mismatched_shapes_and_dtypes() -> None:
    hidden, weight, labels = _case()
    with pytest.raises(ValueError, match=r"weight \(96, 23\)"):
        fused_linear_cross_entropy(hidden, weight[:, :23], labels)
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(hidden, weight, labels[:-1])
    with pytest.raises(TypeError, match="dtypes differ"):
        fused_linear_cross_entropy(hidden.double(), weight, labels)


def test_token_and_sequence_logprobs_match_log_softmax() -> None:
    hidden, weight, labels = _case(n=60)
    logits = (hidden @ weight.t()).reshape(3, 20, -1)
    labels = labels.reshape(3, 20)
    logp = torch.log_softmax(logits, -1)
    valid = labels != -100
    expected = torch.where(valid, logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0.0)
    torch.testing.assert_close(token_logprobs(logits, labels), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sequence_logprobs(logits, labels), expected.sum(-1))
    torch.testing.assert_close(
        sequence_logprobs(logits, labels, average=True), expected.sum(-1) / valid.sum(-1)
    )


def test_sequence_logprobs_from_hidden_matches_logits_path_with_grads() -> None:
    hidden, weight, labels = _case(n=60)
    h = hidden.reshape(3, 20, -1).clone().requires_grad_()
    w = weight.clone().requires_grad_()
    ref = sequence_logprobs((h @ w.t()), labels.reshape(3, 20), average=True)
    ref_grads = torch.autograd.grad(ref.sum(), (h, w))
    out = sequence_logprobs_from_hidden(h, w, labels.reshape(3, 20), average=True, chunk_size=8)
    grads = torch.autograd.grad(out.sum(), (h, w))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        assert _rel(g, r) < 1e-5


def test_fused_linear_ce_refuses_a_second_backward_through_the_same_graph() -> None:
    hidden, weight, labels = _case(n=10)
    out = fused_linear_cross_entropy(hidden.requires_grad_(), weight, labels)
    out.loss_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        out.loss_sum.backward()


def test_fused_linear_ce_in_bfloat16_keeps_dtypes_and_tracks_float32() -> None:
    hidden, weight, labels = _case(n=32, d=16, v=64)
    h = hidden.bfloat16().requires_grad_()
    w = weight.bfloat16().requires_grad_()
    out = fused_linear_cross_entropy(h, w, labels, chunk_size=8, softcap=4.0)
    out.loss_sum.backward()
    assert out.loss_sum.dtype == torch.float32
    assert h.grad.dtype == torch.bfloat16
    assert w.grad.dtype == torch.bfloat16
    # reference: the same bf16 values in float32
    h_ref = h.detach().float().requires_grad_()
    w_ref = w.detach().float().requires_grad_()
    ref = _reference(h_ref, w_ref, labels, softcap=4.0)
    ref.backward()
    assert _rel(out.loss_sum.detach(), ref.detach()) < 1e-2
    assert _rel(h.grad.float(), h_ref.grad) < 2e-2
    assert _rel(w.grad.float(), w_ref.grad) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_linear_ce_on_cuda_matches_plain_and_saves_memory() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    n, d, v = 4096, 512, 32000
    hidden = torch.randn(n, d, device=dev, generator=g, requires_grad=True)
    weight = (torch.randn(v, d, device=dev, generator=g) * d**-0.5).requires_grad_()
    labels = torch.randint(0, v, (n,), device=dev, generator=g)
    labels[::7] = -100
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ref = _reference(hidden, weight, labels)
    ref.backward()
    plain_peak = torch.cuda.max_memory_allocated() - base
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=1024)
    out.loss_sum.backward()
    fused_peak = torch.cuda.max_memory_allocated() - base
    assert _rel(out.loss_sum.detach(), ref.detach()) < 1e-5
    assert _rel(hidden.grad, ref_grads[0]) < 1e-4  # TF32-free fp32 matmuls differ in order only
    assert _rel(weight.grad, ref_grads[1]) < 1e-4
    assert fused_peak < plain_peak / 3


@pytest.mark.parametrize("rows", [1, 15, 16, 17, 300])
def test_logsumexp_by_row_blocks_equals_torch_bit_for_bit(rows: int) -> None:
    from tune.train.losses.fused_linear_ce import _logsumexp_rows

    logits = torch.randn(rows, 1000, generator=torch.Generator().manual_seed(rows)) * 8
    assert torch.equal(_logsumexp_rows(logits), torch.logsumexp(logits, dim=-1, keepdim=True))
