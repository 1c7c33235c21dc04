"""The gated hidden layer as one autograd function: the plain ops' results bit for bit, fewer
saved tensors, and the modules that use it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tune.models import gated_function
from tune.models.gated_function import can_fuse_gated, gated_hidden, packed_gated_hidden
from tune.models.mlp import ACTIVATIONS, GatedMLP
from tune.models.moe import GroupedExperts, clamped_swiglu

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def _gelu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return ACTIVATIONS["gelu_tanh"](gate) * up


def _plain(gate: torch.Tensor, up: torch.Tensor, fn: Fn) -> torch.Tensor:
    return F.silu(gate) * up if fn is None else fn(gate, up)


def _saved_storages(fn: Callable[[], torch.Tensor], *exclude: torch.Tensor) -> dict[int, int]:
    """Bytes of each storage autograd saves while ``fn`` runs, the ``exclude`` ones left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("fn", [None, _gelu_gate, clamped_swiglu], ids=["silu", "gelu", "clamped"])
def test_gated_hidden_equals_the_plain_ops_bit_for_bit(fn: Fn) -> None:
    g = torch.Generator().manual_seed(0)
    gate, up = torch.randn(2, 7, 48, generator=g) * 4, torch.randn(2, 7, 48, generator=g) * 4
    upstream = torch.randn(2, 7, 48, generator=g)
    ref_in = (gate.clone().requires_grad_(), up.clone().requires_grad_())
    got_in = (gate.clone().requires_grad_(), up.clone().requires_grad_())
    ref, got = _plain(*ref_in, fn), gated_hidden(*got_in, fn)
    assert torch.equal(got, ref)
    ref_grads = torch.autograd.grad(ref, ref_in, upstream)
    got_grads = torch.autograd.grad(got, got_in, upstream)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fn", [None, clamped_swiglu], ids=["silu", "clamped"])
@pytest.mark.parametrize("weight_trains", [True, False])
def test_packed_weighted_form_equals_chunk_and_multiply(fn: Fn, weight_trains: bool) -> None:
    g = torch.Generator().manual_seed(1)
    gate_up = torch.randn(33, 2 * 24, generator=g) * 4  # [M, 2H]: gate columns, then up
    weight = torch.rand(33, 1, generator=g)  # [M, 1] routing weights
    upstream = torch.randn(33, 24, generator=g)
    ref_h, got_h = gate_up.clone().requires_grad_(), gate_up.clone().requires_grad_()
    ref_w, got_w = weight.clone().requires_grad_(weight_trains), weight.clone()
    got_w.requires_grad_(weight_trains)
    ref = _plain(*ref_h.chunk(2, dim=-1), fn) * ref_w
    got = packed_gated_hidden(got_h, got_w, fn)
    assert torch.equal(got, ref)
    ref_grads = torch.autograd.grad(ref, (ref_h, ref_w) if weight_trains else (ref_h,), upstream)
    got_grads = torch.autograd.grad(got, (got_h, got_w) if weight_trains else (got_h,), upstream)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def test_row_blocks_give_the_plain_ops_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed SwiGLU runs in blocks of 8 rows here (192 elements: whole vector steps; the
    last block shorter): output and both gradients still equal the plain ops' bit for bit."""
    width = 24
    monkeypatch.setattr(gated_function, "BLOCK_ELEMENTS", 5 * width)  # rounded up to 8 rows
    monkeypatch.setattr(gated_function, "MIN_BLOCKED_ELEMENTS", 0)
    assert [b.stop - b.start for b in gated_function.row_blocks(34, width)] == [8, 8, 8, 8, 2]
    assert gated_function.row_blocks(34, width, torch.device("meta")) == [slice(0, 34)]  # not CPU
    g = torch.Generator().manual_seed(2)
    gate_up = torch.randn(34, 2 * width, generator=g) * 4
    weight = torch.rand(34, 1, generator=g)
    upstream = torch.randn(34, width, generator=g)
    ref_in = [gate_up.clone().requires_grad_(), weight.clone().requires_grad_()]
    got_in = [gate_up.clone().requires_grad_(), weight.clone().requires_grad_()]
    ref = _plain(*ref_in[0].chunk(2, dim=-1), None) * ref_in[1]
    got = packed_gated_hidden(*got_in)
    assert torch.equal(got, ref)
    ref_grads = torch.autograd.grad(ref, ref_in, upstream)
    got_grads = torch.autograd.grad(got, got_in, upstream)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert torch.equal(a, b)


def test_small_inputs_run_in_one_block() -> None:
    assert gated_function.row_blocks(4096, 192) == [slice(0, 4096)]  # 786,432 elements
    assert len(gated_function.row_blocks(8192, 192)) == 8  # 1,024 rows each


def test_only_the_inputs_are_saved() -> None:
    """Plain SwiGLU saves gate, up and silu(gate); the function saves gate and up. The packed
    weighted form saves the [M, 2H] input and the [M, 1] weights, where the plain ops also keep
    silu(gate) and the unweighted product."""
    gate = torch.randn(16, 32, requires_grad=True)
    up = torch.randn(16, 32, requires_grad=True)
    assert len(_saved_storages(lambda: F.silu(gate) * up)) == 3
    assert set(_saved_storages(lambda: gated_hidden(gate, up))) == {
        t.untyped_storage().data_ptr() for t in (gate, up)
    }
    gate_up = torch.randn(16, 64, requires_grad=True)
    weight = torch.rand(16, 1, requires_grad=True)

    def plain() -> torch.Tensor:
        g, u = gate_up.chunk(2, dim=-1)
        return F.silu(g) * u * weight

    plain_bytes = sum(_saved_storages(plain, gate_up, weight).values())
    assert plain_bytes == 2 * 16 * 32 * 4  # silu(gate) and silu(gate) * up
    assert _saved_storages(lambda: packed_gated_hidden(gate_up, weight), gate_up, weight) == {}


def test_fusion_only_in_eager_training_on_plain_tensors() -> None:
    x = torch.randn(4, 8)
    assert can_fuse_gated(x, x)
    with torch.no_grad():
        assert not can_fuse_gated(x, x)  # inference keeps the plain ops (nothing is saved)

    class Subclass(torch.Tensor):
        pass

    assert not can_fuse_gated(x, x.as_subclass(Subclass))


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_mlp_saves_one_hidden_tensor_less_and_trains_alike(activation: str) -> None:
    torch.manual_seed(0)
    mlp = GatedMLP(16, 40, activation)
    x = torch.randn(2, 5, 16, requires_grad=True)
    params = list(mlp.parameters())
    saved = _saved_storages(lambda: mlp(x), x, *params)
    hidden = 2 * 5 * 40 * 4
    assert sorted(saved.values()) == [hidden] * 3  # gate, up and the down projection's input
    out = mlp(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    gate = mlp.gate_proj(x)
    ref = mlp.down_proj(ACTIVATIONS[activation](gate) * mlp.up_proj(x))
    assert torch.equal(out, ref)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *params])
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.equal(a, b)


def test_moe_experts_save_two_hidden_tensors_less(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grouped path keeps its [N*k, 2H] gate-up rows, the routing weights and the down
    projection's [N*k, H] input; the plain ops also kept silu(gate) and the unweighted product."""
    torch.manual_seed(0)
    experts = GroupedExperts(16, 24, 4, implementation="grouped_mm")
    x = torch.randn(10, 16, requires_grad=True)
    selected = torch.stack([torch.randperm(4)[:2] for _ in range(10)])  # [N, k=2]
    weights = torch.rand(10, 2, requires_grad=True)  # the router trains
    counts = torch.bincount(selected.reshape(-1), minlength=4)

    def saved() -> list[int]:
        run = lambda: experts(x, selected, weights, counts)  # noqa: E731
        return sorted(_saved_storages(run, x, *experts.parameters()).values())

    rows, hidden = 10 * 2, 24
    fused = saved()
    assert fused == sorted([
        4 * 4,  # int32 group offsets [E]
        rows * 4, rows * 8, rows * 8,  # routing weights [N*k, 1]; sort order, token of row
        rows * 16 * 4, rows * 2 * hidden * 4, rows * hidden * 4,  # x rows, gate-up, hidden
    ])  # fmt: skip
    monkeypatch.setattr("tune.models.moe.can_fuse_gated", lambda *t: False)
    assert saved() == sorted([*fused, rows * hidden * 4, rows * hidden * 4])
