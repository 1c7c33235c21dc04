"""Tensor-parallel plans as plain data: module-name pattern -> style name (applied elsewhere)."""

from __future__ import annotations

from torch import nn

from tune.models.build import ConfigLike, build_model, resolve_config


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

    Args:
        model_or_config: a native model, family config or HF config.
        sequence_parallel: shard norms and activations along the sequence between blocks.
    """
    if isinstance(model_or_config, nn.Module):
        model = model_or_config
    else:
        model = build_model(resolve_config(model_or_config)[1], device="meta")
    modules = dict(model.named_modules())
    names = set(modules)
    output, embedding = modules.get("output"), modules.get("tok_embeddings")
    tied = output is not None and embedding is not None and output.weight is embedding.weight
    post_norms = "layers.0.post_attn_norm" in names or "layers.0.post_mlp_norm" in names
    if not sequence_parallel or tied or post_norms:
        plan = {
            "layers.*.attn.q_proj": "colwise",
            "layers.*.attn.k_proj": "colwise",
            "layers.*.attn.v_proj": "colwise",
            "layers.*.attn.o_proj": "rowwise",
            "layers.*.mlp.gate_proj": "colwise",
            "layers.*.mlp.up_proj": "colwise",
            "layers.*.mlp.down_proj": "rowwise",
        }
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
