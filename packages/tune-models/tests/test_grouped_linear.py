"""grouped_linear: torch._grouped_mm's values and gradients, with weight-gradient buffers reused
across steps only when nothing else holds them."""

from __future__ import annotations

import copy

import pytest
import torch

from tune.models import MoEFeedForward
from tune.models import grouped_linear as gl
from tune.models.grouped_linear import GradBuffers, grouped_linear
from tune.models.moe import sum_expert_rows

pytestmark = pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="no torch._grouped_mm")

COUNTS = [3, 0, 5, 1]  # expert 1 gets no rows: its gradient slice must be exactly zero


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(COUNTS), 8, generator=gen)  # [M, in]
    weight = torch.randn(len(COUNTS), 4, 8, generator=gen)  # [E, out, in]
    dy = torch.randn(sum(COUNTS), 4, generator=gen)  # [M, out]
    return x, weight, dy


def _reference_grads(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor) -> tuple:
    """Per-expert Python loop: y_e = x_e @ W_e.T."""
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    rows = torch.split(x, COUNTS)
    y = torch.cat([r @ weight[e].t() for e, r in enumerate(rows)])
    y.backward(dy)
    return y.detach(), x.grad, weight.grad


def _offsets() -> torch.Tensor:
    return torch.cumsum(torch.tensor(COUNTS), 0).to(torch.int32)


def _run(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, buffers: GradBuffers) -> tuple:
    x = x.clone().requires_grad_(True)
    y = grouped_linear(x, weight, _offsets(), COUNTS, buffers.claim("w", weight))
    y.backward(dy)
    return y.detach(), x.grad


def test_values_and_gradients_equal_a_per_expert_loop():
    x, w0, dy = _inputs()
    want_y, want_dx, want_dw = _reference_grads(x, w0, dy)
    weight = torch.nn.Parameter(w0.clone())
    y, dx = _run(x, weight, dy, GradBuffers())
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-6)
    torch.testing.assert_close(dx, want_dx, rtol=0, atol=1e-6)
    torch.testing.assert_close(weight.grad, want_dw, rtol=0, atol=1e-6)
    assert torch.count_nonzero(weight.grad[1]) == 0


def test_buffer_is_reused_after_set_to_none_and_values_stay_right():
    weight, buffers = torch.nn.Parameter(_inputs()[1].clone()), GradBuffers()
    pointers = []
    for seed in range(3):
        x, _, dy = _inputs(seed)
        _run(x, weight, dy, buffers)
        want = _reference_grads(x, weight.detach(), dy)[2]
        torch.testing.assert_close(weight.grad, want, rtol=0, atol=1e-6)
        pointers.append(weight.grad.data_ptr())
        weight.grad = None  # zero_grad(set_to_none=True)
    assert len(set(pointers)) == 1  # one storage for every step: no fresh allocation


def test_a_kept_gradient_is_never_overwritten():
    weight, buffers = torch.nn.Parameter(_inputs()[1].clone()), GradBuffers()
    x, _, dy = _inputs(0)
    _run(x, weight, dy, buffers)
    kept, kept_values = weight.grad, weight.grad.clone()
    weight.grad = None
    x2, _, dy2 = _inputs(1)
    _run(x2, weight, dy2, buffers)
    assert torch.equal(kept, kept_values)  # step 2 wrote elsewhere
    assert weight.grad.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(
        weight.grad, _reference_grads(x2, weight.detach(), dy2)[2], rtol=0, atol=1e-6
    )


def test_gradient_accumulation_adds_into_the_existing_grad():
    weight, buffers = torch.nn.Parameter(_inputs()[1].clone()), GradBuffers()
    want = torch.zeros_like(weight)
    for seed in range(3):  # three micro-batches, no zero_grad in between
        x, _, dy = _inputs(seed)
        _run(x, weight, dy, buffers)
        want += _reference_grads(x, weight.detach(), dy)[2]
    torch.testing.assert_close(weight.grad, want, rtol=0, atol=1e-5)


def test_autograd_grad_results_stay_the_callers():
    weight, buffers = torch.nn.Parameter(_inputs()[1].clone()), GradBuffers()
    results = []
    for seed in range(2):
        x, _, dy = _inputs(seed)
        y = grouped_linear(x, weight, _offsets(), COUNTS, buffers.claim("w", weight))
        (dw,) = torch.autograd.grad(y, weight, dy)
        results.append((dw, dw.clone(), _reference_grads(x, weight.detach(), dy)[2]))
    for dw, snapshot, want in results:
        assert torch.equal(dw, snapshot)
        torch.testing.assert_close(dw, want, rtol=0, atol=1e-6)
    assert weight.grad is None


@pytest.mark.parametrize("fused", [False, True], ids=["grouped", "gather-scatter"])
def test_moe_block_weight_used_twice_in_one_step(fused, monkeypatch):
    if fused:  # every call takes the gather/scatter path, not only the large ones
        monkeypatch.setattr(gl, "FUSED_MIN_BYTES", 0)
    torch.manual_seed(0)
    block = MoEFeedForward(8, 12, 4, 2)
    x = torch.randn(1, 5, 8)
    loop = copy.deepcopy(block)
    loop.experts.implementation = "loop"
    for b in (block, loop):  # the same experts twice in one graph: two claims, one buffer
        (b(x) + b(2 * x)).square().sum().backward()
    for name, param in loop.named_parameters():
        got = dict(block.named_parameters())[name].grad
        torch.testing.assert_close(got, param.grad, rtol=0, atol=1e-5, msg=name)


def test_a_copied_block_starts_without_buffers():
    block = MoEFeedForward(8, 12, 4, 2)
    block(torch.randn(1, 5, 8)).sum().backward()
    assert block.experts._grad_buffers._buffers
    assert not copy.deepcopy(block).experts._grad_buffers._buffers


def test_gather_and_scatter_variants_equal_gathered_copies():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 8, generator=gen, requires_grad=True)  # [N, in]
    rows = torch.tensor([0, 4, 1, 1, 2, 3, 0, 4, 2])  # [M]: a token may appear in several groups
    w1 = torch.randn(4, 12, 8, generator=gen, requires_grad=True)  # [E, hidden, in]
    w2 = torch.randn(4, 8, 12, generator=gen, requires_grad=True)  # [E, out, hidden]
    dout = torch.randn(5, 8, generator=gen)

    def reference() -> torch.Tensor:
        h = torch.cat([r @ w1[e].t() for e, r in enumerate(torch.split(x[rows], COUNTS))])
        y = torch.cat([r @ w2[e].t() for e, r in enumerate(torch.split(h.tanh(), COUNTS))])
        return torch.zeros(5, 8).index_add(0, rows, y)

    def fused() -> torch.Tensor:
        h = gl.gather_grouped_linear(x, w1, rows, COUNTS)
        return gl.grouped_linear_scatter_add(h.tanh(), w2, rows, COUNTS, 5)

    results = []
    for fn in (reference, fused):
        out = fn()
        grads = torch.autograd.grad(out, (x, w1, w2), dout)
        results.append((out, *grads))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.count_nonzero(results[1][2][1]) == 0  # expert 1 has no rows


@pytest.mark.parametrize("scatter", [True, False], ids=["scatter_add", "gather"])
def test_sum_expert_rows_keeps_no_row_copy_for_backward(scatter):
    gen = torch.Generator().manual_seed(4)
    n, k, dim = 5, 3, 8
    order = torch.randperm(n * k, generator=gen)  # sorted row r holds slot order[r]
    y_sorted = torch.randn(n * k, dim, generator=gen, requires_grad=True)
    want = torch.zeros(n * k, dim).index_copy(0, order, y_sorted).view(n, k, dim).sum(1)
    saved: list[int] = []  # storage bytes of every saved tensor

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got = sum_expert_rows(y_sorted, order, order // k, n, scatter=scatter)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert saved
    assert all(nbytes <= n * k * 8 for nbytes in saved), saved  # index tensors only
    dout = torch.randn(n, dim, generator=gen)
    (grad,) = torch.autograd.grad(got, y_sorted, dout)
    torch.testing.assert_close(grad, dout[order // k], rtol=0, atol=0)
