"""Tensor-parallel plans as plain data: module-name pattern -> style name (applied elsewhere)."""

from __future__ import annotations

import re

from torch import nn

from tune.models.build import ConfigLike, build_model, resolve_config
from tune.models.moe_decoder import ProjectionRMSNorm

_EXPERTS = re.compile(r"layers\.\d+\.mlp\.experts")


def plan_model(model_or_config: ConfigLike) -> nn.Module:
    """The model a plan is read from: ``model_or_config`` itself, or built on the meta device."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    return build_model(resolve_config(model_or_config)[1], device="meta")


def experts_modules(model: nn.Module) -> list[str]:
    """Names of the stacked routed-experts modules (``layers.<i>.mlp.experts``) of a model."""
    return [
        name
        for name, module in model.named_modules()
        if _EXPERTS.fullmatch(name) and isinstance(getattr(module, "num_experts", None), int)
    ]


def tp_plan(model_or_config: ConfigLike, *, sequence_parallel: bool = True) -> dict[str, str]:
    """The tensor-parallel plan of a model: fnmatch patterns over module names -> style names.

    Style names: "colwise" / "rowwise" (shard output / input features of an ``nn.Linear``),
    "colwise_seq" (all-gather a sequence-sharded input first), "rowwise_seq" (reduce-scatter the
    output along the sequence), "embedding_rowwise_seq" (vocab-sharded embedding, sequence-sharded
    output), "colwise_seq_rep" (LM head: gather the sequence in, full logits out),
    "sequence_parallel" (norms run on the local sequence shard) and "head_sharded" (q/k norms:
    replicated weights applied to the local heads, dim 2 of [B, T, H, D], gradients summed).

    With tied embeddings the embedding and LM head stay replicated (sharding would untie them),
    which rules out sequence parallelism: the plain plan is returned. Gemma's norms on block
    outputs would mix sharded and local activations in the residual, so Gemma gets the plain plan
    too.

    Mixture-of-experts models (``layers.<i>.mlp.experts``) get the plain plan as well: the MoE
    block needs every token of the sequence on each TP rank (its experts are replicated over
    ``tp``, or expert-parallel with ``ep_plan``, which needs the input replicated). Attention
    and the dense feed-forward layers some MoE models keep are sharded; routers, experts and
    shared experts stay replicated over ``tp`` (identical inputs give identical gradients).
    OLMoE's q/k norms (over all heads at once) and gpt-oss's per-head attention sinks have no
    TP style: those models are refused.

    Args:
        model_or_config: a native model, family config or HF config.
        sequence_parallel: shard norms and activations along the sequence between blocks.
    """
    model = plan_model(model_or_config)
    modules = dict(model.named_modules())
    names = set(modules)
    if "layers.0.attn.kv_a_proj" in names:
        raise ValueError(
            "tp_plan: multi-head latent attention (deepseek_v3) has no tensor-parallel plan yet"
        )
    if isinstance(modules.get("layers.0.attn.q_norm"), ProjectionRMSNorm):
        raise ValueError(
            "tp_plan: layers.*.attn.q_norm / k_norm normalise over all heads at once (OLMoE); "
            "with heads sharded over tp the statistic would be per shard: no tensor-parallel plan"
        )
    if getattr(modules.get("layers.0.attn"), "sinks", None) is not None:
        raise ValueError(
            "tp_plan: layers.*.attn.sinks (per-head attention sinks, gpt-oss) has no "
            "tensor-parallel style yet: no tensor-parallel plan"
        )
    output, embedding = modules.get("output"), modules.get("tok_embeddings")
    tied = output is not None and embedding is not None and output.weight is embedding.weight
    post_norms = "layers.0.post_attn_norm" in names or "layers.0.post_mlp_norm" in names
    moe = bool(experts_modules(model))
    # MoE models may keep dense feed-forward layers (first layers, mlp_only_layers): only those
    # get the MLP styles, and a plan pattern must match some module.
    dense_mlp = any(n.startswith("layers.") and n.endswith(".mlp.gate_proj") for n in names)
    if not sequence_parallel or tied or post_norms or moe:
        plan = {
            "layers.*.attn.q_proj": "colwise",
            "layers.*.attn.k_proj": "colwise",
            "layers.*.attn.v_proj": "colwise",
            "layers.*.attn.o_proj": "rowwise",
        }
        if dense_mlp:
            plan["layers.*.mlp.gate_proj"] = "colwise"
            plan["layers.*.mlp.up_proj"] = "colwise"
            plan["layers.*.mlp.down_proj"] = "rowwise"
    else:
        plan = {
            "tok_embeddings": "embedding_rowwise_seq",
            "layers.*.attn_norm": "sequence_parallel",
            "layers.*.attn.q_proj": "colwise_seq",
            "layers.*.attn.k_proj": "colwise_seq",
            "layers.*.attn.v_proj": "colwise_seq",
            "layers.*.attn.o_proj": "rowwise_seq",
            "layers.*.mlp_norm": "sequence_parallel",
            "layers.*.mlp.gate_proj": "colwise_seq",
            "layers.*.mlp.up_proj": "colwise_seq",
            "layers.*.mlp.down_proj": "rowwise_seq",
            "norm": "sequence_parallel",
            "output": "colwise_seq_rep",
        }
    if "layers.0.attn.q_norm" in names:
        plan["layers.*.attn.q_norm"] = "head_sharded"
        plan["layers.*.attn.k_norm"] = "head_sharded"
    return plan
