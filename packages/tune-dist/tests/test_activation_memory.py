"""Activation checkpointing and offloading: same losses and gradients, module names unchanged."""

from __future__ import annotations

import pytest
import torch
from dist_tiny_transformer import Block, build_model, make_batches, summed_loss
from torch import nn

import tune.dist as td

EXACT = 1e-6


def loss_and_grads(model: nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    batch = make_batches(1)[0]
    model.zero_grad()
    loss = summed_loss(model(batch["tokens"]), batch["labels"]) / 50
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture
def baseline() -> tuple[float, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    return loss_and_grads(build_model())


@pytest.mark.parametrize(("match", "every_n", "expected"), [
    ("layers.*", 1, ["layers.0", "layers.1"]),
    (Block, 2, ["layers.0"]),
    ("re:layers\\.1", 1, ["layers.1"]),
])  # fmt: skip
def test_checkpointing_same_loss_and_grads(
    baseline: tuple[float, dict[str, torch.Tensor]], match: td.ModuleMatch, every_n: int,
    expected: list[str],
) -> None:  # fmt: skip
    model = build_model()
    keys = list(model.state_dict())
    assert td.apply_activation_checkpointing(model, match, every_n=every_n) == expected
    assert list(model.state_dict()) == keys  # FQNs are public API: unchanged
    calls: list[str] = []
    for name in expected:
        model.get_submodule(name).attn.register_forward_hook(lambda *_: calls.append("attn"))
    loss, grads = loss_and_grads(model)
    assert abs(loss - baseline[0]) <= EXACT
    assert max_grad_diff(grads, baseline[1]) <= EXACT
    # Each checkpointed block ran its attention twice: once in forward, once recomputed.
    assert len(calls) == 2 * len(expected)


def test_checkpointing_errors() -> None:
    model = build_model()
    with pytest.raises(ValueError, match="matched no submodule"):
        td.apply_activation_checkpointing(model, "blocks.*")
    with pytest.raises(ValueError, match="every_n must be >= 1"):
        td.apply_activation_checkpointing(model, "layers.*", every_n=0)
    td.apply_activation_checkpointing(model, "layers.*")
    with pytest.raises(ValueError, match=r"layers\.0 is already checkpointed"):
        td.apply_activation_checkpointing(model, "layers.*")


def test_offloading_same_loss_and_grads(baseline: tuple[float, dict[str, torch.Tensor]]) -> None:
    model = build_model()
    keys = list(model.state_dict())
    offloader = td.apply_activation_offloading(model, "layers.*", include_host_tensors=True)
    assert list(model.state_dict()) == keys
    loss, grads = loss_and_grads(model)
    assert abs(loss - baseline[0]) <= EXACT
    assert max_grad_diff(grads, baseline[1]) <= EXACT
    # Per block: saved inputs of 7 linears (x4 B*T*D or B*T*hidden floats), norms, SDPA, SiLU...
    assert offloader.offloaded_tensors >= 2 * 7
    assert offloader.offloaded_bytes >= 2 * 7 * 4 * 16 * 64 * 4


def test_offloading_context_manager_and_combined_with_checkpointing(
    baseline: tuple[float, dict[str, torch.Tensor]],
) -> None:
    model = build_model()
    td.apply_activation_checkpointing(model, "layers.*")
    batch = make_batches(1)[0]
    with td.offload_activations(include_host_tensors=True) as offloader:
        loss = summed_loss(model(batch["tokens"]), batch["labels"]) / 50
    loss.backward()  # backward runs outside the context: unpacking still works
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert abs(loss.item() - baseline[0]) <= EXACT
    assert max_grad_diff(grads, baseline[1]) <= EXACT
    assert offloader.offloaded_tensors > 0


def test_offloader_keeps_parameters_small_and_host_tensors() -> None:
    weight = nn.Parameter(torch.randn(64, 64))
    big = torch.randn(64, 64)
    keep_host = td.ActivationOffloader()
    assert keep_host.pack(big) is big  # already in host memory: nothing to do by default
    copy_host = td.ActivationOffloader(include_host_tensors=True, min_bytes=1024)
    assert copy_host.pack(weight) is weight
    assert copy_host.pack(weight.t()) is not None
    assert copy_host.offloaded_tensors == 0
    small = torch.randn(8)  # 32 bytes < min_bytes
    assert copy_host.pack(small) is small
    packed = copy_host.pack(big)
    assert copy_host.offloaded_tensors == 1
    assert copy_host.offloaded_bytes == 64 * 64 * 4
    restored = copy_host.unpack(packed)
    assert restored.data_ptr() != big.data_ptr()
    assert torch.equal(restored, big)


def test_offloading_errors() -> None:
    model = build_model()
    with pytest.raises(ValueError, match="matched no submodule"):
        td.apply_activation_offloading(model, nn.LSTM)
    td.apply_activation_offloading(model, "layers.0")
    with pytest.raises(ValueError, match=r"layers\.0 already offloads"):
        td.apply_activation_offloading(model, "layers.0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("side_stream", [True, False])
def test_offloading_on_cuda_same_grads(side_stream: bool) -> None:
    ref = build_model().cuda()
    batch = {k: v.cuda() for k, v in make_batches(1)[0].items()}
    summed_loss(ref(batch["tokens"]), batch["labels"]).backward()
    model = build_model().cuda()
    offloader = td.apply_activation_offloading(model, "layers.*", use_side_stream=side_stream)
    summed_loss(model(batch["tokens"]), batch["labels"]).backward()
    torch.cuda.synchronize()
    assert offloader.offloaded_tensors > 0
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-5), name
