"""Meta-device builds become real models; TP plans name real modules."""

from __future__ import annotations

import fnmatch

import pytest
import torch

from tune.models import build_from_hf_config, build_named_size, named_size_config, tp_plan


def _tiny(name: str) -> dict:
    config = named_size_config(name)
    config.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128)
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return config


def test_meta_build_to_empty_init_equals_eager_build() -> None:
    config = _tiny("llama3.2-1b")
    torch.manual_seed(0)
    eager = build_from_hf_config(config)
    meta = build_from_hf_config(config, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    meta.init_buffers()
    meta.load_state_dict(eager.state_dict())
    assert meta.output.weight is meta.tok_embeddings.weight  # still tied after loading
    tokens = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(meta(tokens), eager(tokens), atol=0, rtol=0)


def test_assign_load_keeps_tied_weights_and_dtype() -> None:
    config = _tiny("qwen2.5-0.5b")
    source = build_from_hf_config(config, dtype=torch.bfloat16)
    assert source.layers["0"].attn.q_proj.weight.dtype == torch.bfloat16
    meta = build_from_hf_config(config, device="meta")
    meta.load_state_dict(source.state_dict(), assign=True)
    meta.init_buffers()
    assert meta.output.weight is meta.tok_embeddings.weight
    assert not meta.rotary["default"].inv_freq.is_meta


def _modules_matched(model: torch.nn.Module, plan: dict[str, str]) -> dict[str, set[str]]:
    names = [n for n, _ in model.named_modules() if n]
    return {pattern: {n for n in names if fnmatch.fnmatchcase(n, pattern)} for pattern in plan}


def test_tp_plans_cover_every_projection_and_match_real_modules() -> None:
    for name in ("llama3.1-8b", "llama3.2-1b", "gemma2-2b", "qwen3-8b"):
        model = build_named_size(name)
        plan = tp_plan(model)
        matched = _modules_matched(model, plan)
        assert all(matched.values()), f"{name}: patterns matching nothing: {plan}"
        linears = {
            n
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("layers.")
        }
        covered = set().union(*matched.values())
        assert linears <= covered, (
            f"{name}: projections outside the plan: {sorted(linears - covered)[:3]}"
        )
        if model.tie_word_embeddings or name.startswith("gemma"):
            assert "tok_embeddings" not in plan
            assert "output" not in plan
    untied = tp_plan(build_named_size("llama3.1-8b"))
    assert untied["layers.*.attn.q_proj"] == "colwise_seq"
    assert untied["layers.*.attn.o_proj"] == "rowwise_seq"
    assert untied["norm"] == "sequence_parallel"
    assert untied["output"] == "colwise_seq_rep"
    plain = tp_plan(named_size_config("llama3.1-8b"), sequence_parallel=False)
    assert plain["layers.*.mlp.down_proj"] == "rowwise"
    # q/k norms see the local heads only: their gradients need summing over TP ranks.
    assert tp_plan(named_size_config("qwen3-8b"))["layers.*.attn.q_norm"] == "head_sharded"
    assert "layers.*.attn.q_norm" not in untied


def _tiny_moe(name: str, **fields: object) -> dict:
    config = _tiny(name)
    config.update(fields)
    return config


def test_moe_plans_shard_attention_and_name_only_the_routed_experts() -> None:
    from tune.models import ep_plan, routed_expert_counts

    # Qwen3-MoE with a dense first layer (mlp_only_layers): its GatedMLP gets the MLP styles.
    config = _tiny_moe("qwen3-30b-a3b", mlp_only_layers=[0])
    model = build_from_hf_config(config, device="meta")
    plan = tp_plan(model)
    matched = _modules_matched(model, plan)
    assert all(matched.values()), plan
    assert set(plan.values()) == {"colwise", "rowwise", "head_sharded"}  # no sequence parallel
    covered = set().union(*matched.values())
    assert {"layers.0.mlp.gate_proj", "layers.0.mlp.down_proj", "layers.1.attn.q_proj"} <= covered
    assert not any(".experts" in n or ".router" in n for n in covered)
    eplan = ep_plan(config)
    assert eplan == {"layers.*.mlp.experts": "grouped_experts"}
    assert set().union(*_modules_matched(model, eplan).values()) == {"layers.1.mlp.experts"}
    assert routed_expert_counts(model) == [128]
    # Every layer sparse: no MLP pattern (a pattern matching nothing is an error in tune.dist).
    for name in ("qwen3-30b-a3b", "mixtral-8x7b", "qwen1.5-moe-a2.7b"):
        model = build_from_hf_config(_tiny(name), device="meta")
        plan = tp_plan(model)
        assert all(_modules_matched(model, plan).values()), (name, plan)
        assert not any("mlp" in p for p in plan), (name, plan)
        assert ep_plan(model) == {"layers.*.mlp.experts": "grouped_experts"}
    assert routed_expert_counts(named_size_config("mixtral-8x7b")) == [8]
    # Dense families have no experts.
    assert ep_plan(named_size_config("llama3.2-1b")) == {}
    assert routed_expert_counts(named_size_config("qwen3-8b")) == []


def test_tp_plan_is_refused_for_moe_attention_without_a_style() -> None:
    with pytest.raises(ValueError, match="all heads at once"):
        tp_plan(_tiny("olmoe-1b-7b"))
    with pytest.raises(ValueError, match="attention sinks"):
        tp_plan(_tiny_moe("gpt-oss-20b", layer_types=["sliding_attention", "full_attention"]))
