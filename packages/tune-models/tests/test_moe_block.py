"""MoE block: grouped dispatch equals the per-expert loop (values and grads), parity with transformers."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from torch import nn

from tune.models import (
    GatedMLP,
    MoEFeedForward,
    clamped_swiglu,
)

DIM, HIDDEN, EXPERTS, TOP_K = 16, 8, 4, 2


def _block(score_func: str, norm: bool, shared: str, bias: bool) -> MoEFeedForward:
    torch.manual_seed(0)
    block = MoEFeedForward(
        DIM,
        HIDDEN,
        EXPERTS,
        TOP_K,
        score_func=score_func,  # type: ignore[arg-type]
        norm_topk_prob=norm,
        routed_scale=2.5 if score_func == "sigmoid" else 1.0,
        routing_bias=bias,
        shared_expert=GatedMLP(DIM, 12) if shared != "none" else None,
        shared_expert_gate=shared == "gated",
    )
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
        if block.routing_bias is not None:
            block.routing_bias.normal_(0.0, 0.3)
    return block


def _run(block: MoEFeedForward, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = block(x)
    out.backward(grad_out)
    grads = {name: p.grad for name, p in block.named_parameters()}
    return {"out": out.detach(), "x.grad": x.grad, **{f"{n}.grad": g for n, g in grads.items()}}


def _max_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    assert a.keys() == b.keys()
    return {k: (a[k] - b[k]).abs().max().item() for k in a}


@pytest.mark.parametrize(
    ("score_func", "norm", "shared", "bias"),
    list(
        itertools.product(
            ["softmax", "sigmoid"], [True, False], ["none", "plain", "gated"], [False, True]
        )
    ),
)
def test_sorted_dispatch_equals_per_expert_loop(score_func, norm, shared, bias):
    block = _block(score_func, norm, shared, bias)
    x = torch.randn(3, 7, DIM)
    grad_out = torch.randn(3, 7, DIM)
    sorted_block, loop_block = copy.deepcopy(block), copy.deepcopy(block)
    sorted_block.experts.implementation = "sorted"
    loop_block.experts.implementation = "loop"
    got, want = _run(sorted_block, x, grad_out), _run(loop_block, x, grad_out)
    # every parameter got a gradient, including each expert that was chosen at least once
    assert all(g is not None for g in got.values())
    diffs = _max_diffs(got, want)
    assert max(diffs.values()) <= 1e-5, diffs
    stats = sorted_block.router_stats
    assert stats is not None
    assert stats.selected_experts.shape == (21, TOP_K)
    assert stats.scores.shape == stats.logits.shape == (21, EXPERTS)
    assert torch.equal(
        stats.tokens_per_expert, torch.bincount(stats.selected_experts.flatten(), minlength=EXPERTS)
    )


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch has no _grouped_mm")
def test_grouped_mm_path_equals_per_expert_loop():
    block = _block("softmax", True, "none", False)
    x, grad_out = torch.randn(2, 5, DIM), torch.randn(2, 5, DIM)
    grouped_block, loop_block = copy.deepcopy(block), copy.deepcopy(block)
    grouped_block.experts.implementation = "grouped_mm"
    loop_block.experts.implementation = "loop"
    try:
        got = _run(grouped_block, x, grad_out)
    except RuntimeError as error:  # the CPU kernel is not in every torch build
        pytest.skip(f"torch._grouped_mm unavailable on CPU: {error}")
    diffs = _max_diffs(got, _run(loop_block, x, grad_out))
    assert max(diffs.values()) <= 1e-5, diffs


def test_routing_bias_steers_selection_not_weights():
    block = _block("sigmoid", False, "none", True)
    block.routed_scale = 1.0
    assert block.routing_bias is not None
    block.routing_bias.zero_()
    block.routing_bias[3] = 100.0
    block.routing_bias[1] = 50.0
    _, stats = block.forward_with_stats(torch.randn(1, 6, DIM))
    assert stats.selected_experts.tolist() == [[3, 1]] * 6
    weights, _ = block.route(torch.randn(4, DIM))
    assert torch.all(weights < 1.0)  # sigmoid scores, not score + bias
    assert stats.tokens_per_expert.tolist() == [0, 6, 0, 6]
    assert "routing_bias" in block.state_dict()
    assert "routing_bias" not in dict(block.named_parameters())


def test_module_names_are_stable():
    keys = set(_block("softmax", True, "gated", True).state_dict())
    assert keys == {
        "router.weight",
        "experts.gate_up_proj",
        "experts.down_proj",
        "shared_expert.gate_proj.weight",
        "shared_expert.up_proj.weight",
        "shared_expert.down_proj.weight",
        "shared_expert_gate.weight",
        "routing_bias",
    }
    block = _block("softmax", True, "none", False)
    assert block.experts.gate_up_proj.shape == (EXPERTS, 2 * HIDDEN, DIM)
    assert block.experts.down_proj.shape == (EXPERTS, DIM, HIDDEN)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="top_k=5"):
        MoEFeedForward(DIM, HIDDEN, EXPERTS, 5)
    with pytest.raises(ValueError, match="'tanh'"):
        MoEFeedForward(DIM, HIDDEN, EXPERTS, 2, score_func="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shared_expert_gate"):
        MoEFeedForward(DIM, HIDDEN, EXPERTS, 2, shared_expert_gate=True)


def _hf_block(family: str, norm: bool) -> tuple[nn.Module, MoEFeedForward]:
    """A transformers sparse MoE block with random weights and ours holding the same weights."""
    common: dict[str, Any] = {
        "hidden_size": DIM,
        "num_experts_per_tok": TOP_K,
        "hidden_act": "silu",
    }
    config: Any
    shared = None
    if family == "qwen3_moe":
        from transformers.models.qwen3_moe import modeling_qwen3_moe as m

        config = m.Qwen3MoeConfig(
            **common, moe_intermediate_size=HIDDEN, num_experts=EXPERTS, norm_topk_prob=norm
        )
        hf: nn.Module = m.Qwen3MoeSparseMoeBlock(config)
    elif family == "qwen2_moe":
        from transformers.models.qwen2_moe import modeling_qwen2_moe as m2

        config = m2.Qwen2MoeConfig(
            **common,
            moe_intermediate_size=HIDDEN,
            num_experts=EXPERTS,
            norm_topk_prob=norm,
            shared_expert_intermediate_size=12,
        )
        hf = m2.Qwen2MoeSparseMoeBlock(config)
        shared = GatedMLP(DIM, 12)
    else:
        from transformers.models.mixtral import modeling_mixtral as m3

        config = m3.MixtralConfig(**common, intermediate_size=HIDDEN, num_local_experts=EXPERTS)
        hf = m3.MixtralSparseMoeBlock(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
    ours = MoEFeedForward(
        DIM,
        HIDDEN,
        EXPERTS,
        TOP_K,
        norm_topk_prob=norm,
        shared_expert=shared,
        shared_expert_gate=shared is not None,
    )
    hf_state = hf.state_dict()
    renamed = {("router.weight" if k == "gate.weight" else k): v for k, v in hf_state.items()}
    ours.load_state_dict(renamed, strict=True)
    return hf.eval(), ours.eval()


@pytest.mark.parametrize(
    ("family", "norm"),
    [("qwen3_moe", True), ("qwen3_moe", False), ("qwen2_moe", False), ("mixtral", True)],
)
def test_parity_with_transformers_sparse_moe_block(family, norm):
    hf, ours = _hf_block(family, norm)
    x = torch.randn(2, 9, DIM)
    want = hf(x)
    if isinstance(want, tuple):
        want = want[0]
    for impl in ("sorted", "loop"):
        ours.experts.implementation = impl  # type: ignore[assignment]
        diff = (ours(x) - want).abs().max().item()
        assert diff <= 1e-5, (impl, diff)


def _deepseek_blocks(topk_groups: int) -> tuple[nn.Module, MoEFeedForward]:
    """transformers' DeepSeek-V3 MoE (8 experts in 4 groups, sigmoid, bias) and ours, same weights."""
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

    config = m.DeepseekV3Config(
        hidden_size=DIM,
        moe_intermediate_size=HIDDEN,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=topk_groups,
        n_shared_experts=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        hidden_act="silu",
    )
    hf = m.DeepseekV3MoE(config)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
        hf.gate.e_score_correction_bias.normal_(0.0, 0.3)
    ours = MoEFeedForward(
        DIM,
        HIDDEN,
        8,
        2,
        score_func="sigmoid",
        norm_topk_prob=True,
        routed_scale=2.5,
        routing_bias=True,
        shared_expert=GatedMLP(DIM, HIDDEN),
        num_groups=4,
        topk_groups=topk_groups,
    )
    names = {"gate.weight": "router.weight", "gate.e_score_correction_bias": "routing_bias"}
    state = {
        names.get(k, k.replace("shared_experts.", "shared_expert.")): v
        for k, v in hf.state_dict().items()
    }
    ours.load_state_dict(state, strict=True)
    return hf.eval(), ours.eval()


@pytest.mark.parametrize("topk_groups", [1, 2])
def test_group_limited_routing_matches_deepseek_v3(topk_groups):
    hf, ours = _deepseek_blocks(topk_groups)
    x = torch.randn(2, 9, DIM)
    want = hf(x)
    for impl in ("sorted", "loop"):
        ours.experts.implementation = impl  # type: ignore[assignment]
        out, stats = ours.forward_with_stats(x)
        assert (out - want).abs().max().item() <= 1e-5, impl
    # every token's experts lie in at most `topk_groups` of the 4 groups
    groups_used = (stats.selected_experts // 2).sort(dim=-1).values
    distinct = 1 + (groups_used[:, 1:] != groups_used[:, :-1]).sum(dim=-1)
    assert int(distinct.max()) <= topk_groups
    _, _, hf_indices = hf.gate(x)
    assert torch.equal(stats.selected_experts.sort(-1).values, hf_indices.sort(-1).values)


def test_group_limited_routing_arguments_are_checked():
    with pytest.raises(ValueError, match="num_groups=3"):
        MoEFeedForward(DIM, HIDDEN, 8, 2, num_groups=3)
    with pytest.raises(ValueError, match="topk_groups=5"):
        MoEFeedForward(DIM, HIDDEN, 8, 2, num_groups=4, topk_groups=5)


def _gpt_oss_block(limit: float = 0.6) -> MoEFeedForward:
    torch.manual_seed(2)
    block = MoEFeedForward(
        DIM,
        HIDDEN,
        EXPERTS,
        TOP_K,
        router_bias=True,
        expert_bias=True,
        glu="clamped_swiglu",
        swiglu_limit=limit,
    )
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    return block


@pytest.mark.parametrize("impl", ["sorted", "grouped_mm"])
def test_biased_clamped_experts_every_path_equals_loop(impl):
    block = _gpt_oss_block()
    x, grad_out = torch.randn(3, 7, DIM), torch.randn(3, 7, DIM)
    fast, loop = copy.deepcopy(block), copy.deepcopy(block)
    fast.experts.implementation = impl  # type: ignore[assignment]
    loop.experts.implementation = "loop"
    try:
        got = _run(fast, x, grad_out)
    except RuntimeError as error:  # the CPU grouped kernel is not in every torch build
        pytest.skip(f"torch._grouped_mm unavailable on CPU: {error}")
    want = _run(loop, x, grad_out)
    assert {"experts.gate_up_proj_bias.grad", "experts.down_proj_bias.grad"} <= set(got)
    assert all(g is not None for g in got.values())
    diffs = _max_diffs(got, want)
    assert max(diffs.values()) <= 1e-5, diffs


def test_clamped_swiglu_values_and_its_clamps_are_used():
    gate = torch.tensor([-2.0, 0.3, 9.0])
    up = torch.tensor([-9.0, 0.5, 9.0])
    got = clamped_swiglu(gate, up, alpha=1.702, limit=7.0)
    g = torch.tensor([-2.0, 0.3, 7.0])  # gate clamped above only, up on both sides
    u = torch.tensor([-7.0, 0.5, 7.0])
    assert torch.allclose(got, (u + 1) * g * torch.sigmoid(1.702 * g), rtol=0, atol=1e-6)
    # in the block test above, some gate and up values fall outside the limit (the clamp matters)
    block = _gpt_oss_block()
    x = torch.randn(21, DIM)
    h = torch.einsum("nd,ehd->neh", x, block.experts.gate_up_proj)
    h = h + block.experts.gate_up_proj_bias
    assert (h.abs() > 0.6).float().mean() > 0.2


def test_gpt_oss_router_equals_softmax_over_the_top_k_logits():
    block = _gpt_oss_block()
    x = torch.randn(10, DIM)
    weights, stats = block.route(x)
    logits = block.router(x)  # with its bias
    top = torch.topk(logits, TOP_K, dim=-1)
    assert torch.equal(stats.selected_experts, top.indices)
    assert torch.allclose(weights, torch.softmax(top.values, dim=-1), rtol=0, atol=1e-6)


def test_biased_module_names_are_stable():
    keys = set(_gpt_oss_block().state_dict())
    assert keys == {
        "router.weight",
        "router.bias",
        "experts.gate_up_proj",
        "experts.gate_up_proj_bias",
        "experts.down_proj",
        "experts.down_proj_bias",
    }
    block = _gpt_oss_block()
    assert block.experts.gate_up_proj_bias is not None
    assert block.experts.gate_up_proj_bias.shape == (EXPERTS, 2 * HIDDEN)
    assert block.experts.down_proj_bias is not None
    assert block.experts.down_proj_bias.shape == (EXPERTS, DIM)
    with pytest.raises(ValueError, match="'geglu'"):
        MoEFeedForward(DIM, HIDDEN, EXPERTS, 2, glu="geglu")  # type: ignore[arg-type]


def test_compiled_block_equals_eager_on_cpu_float32():
    # torch._grouped_mm's compile-time check takes bf16 only: compiled fp32 runs the sorted path
    torch._dynamo.reset()
    block = _block("softmax", True, "gated", False)
    x = torch.randn(2, 5, DIM)
    grad_out = torch.randn(2, 5, DIM)
    want = _run(block, x, grad_out)
    compiled = copy.deepcopy(block)
    compiled.zero_grad(set_to_none=True)
    compiled.compile(backend="eager")
    diffs = _max_diffs(_run(compiled, x, grad_out), want)
    torch._dynamo.reset()
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.parametrize("impl", ["sorted", "grouped_mm", "loop"])
def test_experts_take_an_empty_batch(impl):
    # an expert-parallel rank may receive no rows at all
    experts = _block("softmax", True, "none", False).experts
    experts.implementation = impl
    x = torch.zeros(0, DIM, requires_grad=True)
    out = experts(
        x,
        torch.zeros(0, TOP_K, dtype=torch.long),
        torch.zeros(0, TOP_K),
        torch.zeros(EXPERTS, dtype=torch.long),
    )
    assert out.shape == (0, DIM)
    out.sum().backward()
    assert x.grad is not None


def test_cpu_row_gather_equals_advanced_indexing_bit_for_bit():
    from tune.models.moe import _gather_rows

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 48, generator=gen, requires_grad=True)
    rows = torch.randint(0, 64, (512,), generator=gen)  # repeats: the backward must add them
    grad = torch.randn(512, 48, generator=gen)
    got = _gather_rows(x, rows)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    want = x[rows]
    (want_grad,) = torch.autograd.grad(want, x, grad)
    assert torch.equal(got, want)
    assert torch.equal(got_grad, want_grad)
