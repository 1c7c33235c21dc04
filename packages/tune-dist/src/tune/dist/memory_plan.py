"""Per-rank peak memory of a decoder's training step, and the smallest layout that fits.

``estimate_memory(shape, params, layout)`` adds up what one rank holds at the step's peak:

- parameters: sharded ones ``/ (fsdp ranks * tp)`` (all on the host with ``cpu_offload``), NF4
  bytes as given, the root module's (embeddings, head, final norm) kept whole through the step,
  as FSDP2 does for the root;
- gradients (trainable parameters, sharded like them) and optimizer state (``OPTIMIZER_STATE``:
  AdamW 2 moments in the parameter dtype, 8-bit AdamW about 2 bytes, SGD none);
- activations: the tensors autograd saves per block, in elements per token (``SAVED_ALWAYS``,
  ``SAVED_IF_TRAINED``:
  measured on CPU with ``torch.autograd.graph.saved_tensors_hooks`` for tune.models' block —
  RMSNorm, q/k/v, SDPA, o-projection, gated MLP — and checked by a test), times the layers; with
  activation checkpointing the block inputs plus one block recomputed; with offloading two blocks
  on the device and the rest on the host;
- loss: full-vocabulary float32 logits (logits, log-softmax, its gradient alive together) or the
  chunked fused cross-entropy (one ``[chunk, vocab]`` float32 chunk and the hidden gradient);
- communication: FSDP2's gathered block (two with prefetch) and, in backward, its unsharded
  gradients for the reduce-scatter; a pipeline stage's send and receive buffers; ring
  attention's two K/V blocks in flight; expert parallelism's all-to-all buffers.

Pipeline parallelism (``pp_size``): a rank holds ``ceil(num_layers / pp)`` blocks; the embedding
lives on the first stage, the final norm, head and loss on the last, and the estimate is the
larger of the two (``MemoryEstimate.stage``). A micro-batch is ``seq_len * micro_batch_size /
pp_microbatches`` tokens; the first stage keeps ``PIPELINE_IN_FLIGHT`` micro-batches' activations
(GPipe and looped BFS: all of them; the 1F1B family: ``min(pp, micro-batches)``), the last one
(one under 1F1B). Context parallelism (``cp_size``) splits every sequence over ``cp`` ranks:
activations and loss are those of ``seq_len / cp`` tokens (attention is flash-style, no
``T^2`` term, as the library's ring attention is). Mixture-of-experts blocks (``ModelShape``'s
``num_experts``) save the active width (top-k experts and the shared expert), the router's float32
scores ``[tokens, E]``, the routing indices and the permuted tokens (``MOE_*``); the routed
experts' parameters are split over ``ep * (fsdp / ep)`` ranks (replicated over TP, whose plan
keeps the MoE block whole).

The peak is the largest of three moments: the end of forward (every saved activation and the loss
alive), the start of backward (saved activations, a recomputed block, the transient tensors of
one block's backward: ``BACKWARD_WORKSPACE_PER_TOKEN``) and the end of backward (every gradient
alive). Every constant was measured on CPU against real steps of tune.models' decoder (the
recipes' ``tune plan`` test: 14 runs within 15%). Sizes are bytes.

    est = estimate_memory(ModelShape(...), ParameterCounts(...), TrainingLayout(seq_len=4096))
    est.total, est.rows()
    best = recommend_layout(shape, params, layout, world_size=8, device_bytes=80 * 2**30)

The dataclasses live in ``tune.dist.memory_layout``, the layout search (``candidate_layouts``,
``recommend_layout``) in ``tune.dist.layout_search``; all are exported by ``tune.dist``.
"""

from __future__ import annotations

import logging
import math

from tune.dist.memory_layout import (
    GIB,
    OPTIMIZER_STATE,
    PIPELINE_IN_FLIGHT,
    SAVED_ALWAYS,
    SAVED_IF_TRAINED,
    MemoryEstimate,
    ModelShape,
    ParameterCounts,
    TrainingLayout,
)

logger = logging.getLogger(__name__)

__all__ = [
    "GIB",
    "OPTIMIZER_STATE",
    "PIPELINE_IN_FLIGHT",
    "SAVED_ALWAYS",
    "SAVED_IF_TRAINED",
    "MemoryEstimate",
    "ModelShape",
    "ParameterCounts",
    "TrainingLayout",
    "estimate_memory",
    "estimate_stages",
    "saved_activation_elements",
]

SAVED_FLOAT32_PER_TOKEN = 2  # the two norms' reciprocal RMS, float32
SAVED_FLOAT32_PER_TOKEN_HEAD = 1  # SDPA's log-sum-exp, float32, per query head
ROTARY_FLOAT32_PER_TOKEN_HEAD_DIM = 2  # cos and sin, float32, shared by every block
# Transient tensors of one block's backward, per token, in elements of the ffn width.
BACKWARD_WORKSPACE_PER_TOKEN = 3
# A MoE feed-forward's saved tensors per token beyond the gated MLP's (measured on tune.models'
# MoEFeedForward on the CPU): when the experts train, the permuted tokens into them
# ([N * k, d], counted with the "gate_up" input); in float32 units, the router's scores [N, E],
# three int64 [N * k] index tensors and two float32 copies of the routing weights (8 per expert
# chosen), and the weights' sum. The routed hidden rows are the gated MLP's (gate-up rows and the
# down projection's input): the routing weights scale the hidden rows inside the gated function,
# which keeps no unweighted copy.
MOE_FLOAT32_PER_TOKEN_CHOICE = 8
MOE_FLOAT32_PER_TOKEN = 1
# Logits-sized float32 tensors alive at once: logits, log-softmax, its gradient (plain CE);
# one chunk's logits and logsumexp's temporary (fused CE). Measured on CPU.
PLAIN_CE_LOGITS_COPIES = 3
FUSED_CE_CHUNK_COPIES = 2


def saved_activation_elements(
    shape: ModelShape,
    params: ParameterCounts | None = None,
    tp_size: int = 1,
    sequence_parallel: bool = True,
) -> tuple[float, float]:
    """Elements one block saves per token: ``(in the activation dtype, in float32)``.

    Args:
        shape: the model.
        params: which Linears are trained and what adapters save (None: full fine-tuning).
        tp_size: heads and the MLP width are split over TP ranks (a MoE block is not).
        sequence_parallel: the norms' tensors are split along the sequence too (TP only).
    """
    widths = {
        "width": shape.hidden_size,
        "q_heads": shape.num_heads * shape.head_dim,
        "kv_heads": shape.num_kv_heads * shape.head_dim,
        "ffn": shape.ffn_width,
    }
    trained = params.trained_inputs if params is not None else frozenset(SAVED_IF_TRAINED)
    ffn = widths["ffn"] * (SAVED_ALWAYS["ffn"] + (1 if "down" in trained else 0))
    # Under TP, heads and the MLP width are split; the norms' tensors too with sequence
    # parallelism, but a Linear's saved input is the whole sequence gathered. TP's plan keeps a
    # MoE block whole on every rank (experts replicated or expert-parallel).
    split = sum(widths[width] * count for width, count in SAVED_ALWAYS.items()
                if width not in ("width", "ffn"))  # fmt: skip
    split += params.adapter_saved_per_token if params is not None else 0
    whole = 0.0
    if shape.num_experts:  # + the permuted tokens
        tokens = shape.experts_per_token * shape.hidden_size if "gate_up" in trained else 0
        whole = ffn + tokens
    else:
        split += ffn
    norms = widths["width"] * SAVED_ALWAYS["width"]
    gathered = widths["width"] * sum(1 for key in ("qkv", "gate_up") if key in trained)
    elements = split / tp_size + norms / (tp_size if sequence_parallel else 1) + gathered + whole
    fp32 = SAVED_FLOAT32_PER_TOKEN / (tp_size if sequence_parallel else 1)
    fp32 += SAVED_FLOAT32_PER_TOKEN_HEAD * shape.num_heads / tp_size
    if shape.num_experts:  # the router's float32 scores [N, E], indices and weights [N, k]
        fp32 += shape.num_experts + MOE_FLOAT32_PER_TOKEN_CHOICE * shape.experts_per_token
        fp32 += MOE_FLOAT32_PER_TOKEN
    return elements, fp32


def _loss_bytes(shape: ModelShape, layout: TrainingLayout, tokens: float) -> float:
    d, vocab, s = shape.hidden_size, shape.vocab_size, layout.dtype_bytes
    if not layout.fused_ce:
        logits = tokens * vocab * 4
        if layout.tp_size > 1:  # the head's [tokens, vocab / tp] shards, gathered whole
            return (PLAIN_CE_LOGITS_COPIES + 1 + 1 / layout.tp_size) * logits
        return PLAIN_CE_LOGITS_COPIES * logits
    labelled = math.ceil(tokens * layout.labelled_fraction)
    chunk = min(layout.ce_chunk_size, labelled)
    # gradient of the hidden states, the labelled rows, a float32 chunk of logits
    return tokens * d * s + labelled * d * s + FUSED_CE_CHUNK_COPIES * chunk * vocab * 4


def _loss_kept_bytes(shape: ModelShape, layout: TrainingLayout, tokens: float) -> float:
    """What the loss of a micro-batch keeps until its backward: the float32 log-probabilities
    (plain CE) or the hidden states' gradient (the fused loss computes it in forward)."""
    if not layout.fused_ce:
        return tokens * shape.vocab_size * 4
    return tokens * shape.hidden_size * layout.dtype_bytes


def estimate_memory(
    shape: ModelShape, params: ParameterCounts, layout: TrainingLayout
) -> MemoryEstimate:
    """Peak bytes one rank holds during a training step (see the module docstring).

    With pipeline parallelism the larger of the first and the last stage's estimates.

    Args:
        shape: the model's sizes.
        params: its parameters once prepared for the training method.
        layout: sequence, batch, dtype, optimizer and parallel layout.
    """
    return max(estimate_stages(shape, params, layout), key=lambda est: est.total)


def estimate_stages(
    shape: ModelShape, params: ParameterCounts, layout: TrainingLayout
) -> list[MemoryEstimate]:
    """``estimate_memory`` of each kind of rank: ``[all]`` without pipeline parallelism, else
    ``[first, last]`` (the stage holding the embedding, the one holding the norm, head and loss;
    a middle stage holds no more than the first)."""
    if layout.pp_size == 1:
        return [_estimate_stage(shape, params, layout, "all")]
    return [_estimate_stage(shape, params, layout, stage) for stage in ("first", "last")]


def _estimate_stage(
    shape: ModelShape, params: ParameterCounts, layout: TrainingLayout, stage: str
) -> MemoryEstimate:
    s, shards = layout.dtype_bytes, layout.fsdp_size * layout.tp_size
    # Routed experts: split over ep ranks, then FSDP over the rest of the data-parallel ranks;
    # replicated over TP.
    expert_shards = layout.ep_size * max(layout.fsdp_size // layout.ep_size, 1)
    tokens = layout.tokens
    d, L = shape.hidden_size, shape.num_layers
    first, last = stage in ("all", "first"), stage in ("all", "last")
    pp = layout.pp_size
    n_mb = layout.microbatches
    layers = -(-L // pp)  # this stage's blocks (rounded up)

    # ---- parameters, gradients and optimizer state --------------------------------------------
    root_all = min(params.root, params.total)
    embedding = min(root_all, shape.vocab_size * d)
    if stage == "all":
        root_elems = root_all
    elif stage == "first":
        root_elems = embedding
    else:  # norm and head; a tied head is the embedding's weight, held here too
        rest = root_all - embedding
        root_elems = rest if rest >= shape.vocab_size * d else root_all
    root_trainable = root_elems if params.head_trainable else 0
    root_trainable_all = root_all if params.head_trainable else 0
    experts = min(params.experts, params.total)
    experts_trainable = min(params.experts_trainable, experts)
    dense_elems = max(params.total - root_all - experts, 0) * layers // L
    expert_elems = experts * layers // L
    dense_trainable = max(params.trainable - root_trainable_all - experts_trainable, 0)
    dense_trainable = dense_trainable * layers // L + root_trainable
    expert_trainable = experts_trainable * layers // L
    quantized = params.quantized_bytes * layers // L
    dense_param_bytes = dense_elems * s + quantized
    # The root's parameters (embeddings, head) stay whole on every rank for the whole step.
    parameters = (dense_param_bytes // shards + expert_elems * s // expert_shards
                  + root_elems * s // layout.tp_size)  # fmt: skip
    grads = dense_trainable * s // shards + expert_trainable * s // expert_shards
    copies, extra = OPTIMIZER_STATE[layout.optimizer]
    per_element = copies * s + extra
    optimizer = (int(dense_trainable * per_element) // shards
                 + int(expert_trainable * per_element) // expert_shards)  # fmt: skip
    host = 0
    if layout.cpu_offload and layout.fsdp_size > 1:
        host = parameters + grads + optimizer
        parameters, grads, optimizer = root_elems * s // layout.tp_size, 0, 0

    # ---- activations and loss -----------------------------------------------------------------
    # Micro-batches whose activations this stage keeps: the first stage runs ahead of the last.
    in_flight = 1
    if pp > 1:
        all_of_them = PIPELINE_IN_FLIGHT[layout.pp_schedule] == "all"
        in_flight = n_mb if all_of_them else (min(pp, n_mb) if first else 1)
    per_token, per_token_fp32 = saved_activation_elements(
        shape, params, layout.tp_size, layout.sequence_parallel
    )
    block_bytes = tokens * (per_token * s + per_token_fp32 * 4)
    shared = tokens * (ROTARY_FLOAT32_PER_TOKEN_HEAD_DIM * shape.head_dim * 4 + 2 * d * s)
    sp = layout.tp_size if layout.sequence_parallel else 1
    boundary = tokens * d * s / sp  # a block's input, all a checkpointed block keeps
    recomputed = 0.0  # one block's activations, rebuilt in backward
    saved: float
    if layout.activation_checkpointing:
        saved, recomputed = in_flight * (layers * boundary + shared), block_bytes
    elif layout.activation_offloading:
        saved = min(layers * in_flight, 2) * block_bytes + in_flight * shared
        host += max(layers * in_flight - 2, 0) * int(block_bytes)
    else:
        saved = in_flight * (layers * block_bytes + shared)
    ffn_split = 1 if shape.num_experts else layout.tp_size
    workspace = BACKWARD_WORKSPACE_PER_TOKEN * tokens * shape.ffn_width * s / ffn_split
    workspace += params.largest_quantized * s  # an NF4 weight dequantized for one matmul
    loss = 0.0
    if last:  # this micro-batch's loss, and what the earlier ones keep for their backward
        loss = _loss_bytes(shape, layout, tokens)
        loss += (in_flight - 1) * _loss_kept_bytes(shape, layout, tokens)
    head_grad = shape.vocab_size * d * 4 // layout.tp_size if params.head_trainable and last else 0

    # ---- buffers: FSDP2's gathered block (prefetch: two) and unsharded gradients; pipeline
    # send/receive ([tokens, d] each way); ring attention's two K/V blocks in flight; the expert
    # all-to-all's permuted tokens out and back ([tokens * k, d] each) ------------------------
    comm = 0.0
    if layout.fsdp_size > 1:
        per_block = (
            dense_param_bytes / layout.tp_size + expert_elems * s / layout.ep_size
        ) / layers
        grad_block = dense_trainable * s / layout.tp_size  # (the root's too: as measured)
        grad_block = (grad_block + expert_trainable * s / layout.ep_size) / layers
        comm += 2 * per_block + grad_block
    if pp > 1:
        comm += 2 * tokens * d * s
    if layout.cp_size > 1:
        comm += 2 * 2 * tokens * shape.num_kv_heads * shape.head_dim * s
    if layout.ep_size > 1 and shape.num_experts:
        comm += 2 * tokens * shape.experts_per_token * d * s

    # ---- the peak: end of forward (loss), backward of the last block, or end of backward -------
    live_grads = grads if layout.gradient_accumulation > 1 else 0
    fused_head_grad = head_grad if layout.fused_ce else 0  # the fused loss makes it in forward
    at_loss = saved + loss + fused_head_grad
    in_backward = saved + recomputed + workspace + boundary + head_grad
    at_end = grads - live_grads + workspace
    phases = {
        "end of forward": at_loss,
        "start of backward": in_backward,
        "end of backward": at_end,
    }
    phase = max(phases, key=lambda k: phases[k])
    if phase == "end of backward":
        return MemoryEstimate(
            parameters=int(parameters), gradients=grads, optimizer_state=optimizer,
            activations=int(workspace), loss=0, communication=int(comm), host=host, phase=phase,
            stage=stage,
        )  # fmt: skip
    grad_part = live_grads + (fused_head_grad if phase == "end of forward" else head_grad)
    activations = saved + (0 if phase == "end of forward" else recomputed + workspace + boundary)
    return MemoryEstimate(
        parameters=int(parameters), gradients=int(grad_part), optimizer_state=optimizer,
        activations=int(activations), loss=int(loss) if phase == "end of forward" else 0,
        communication=int(comm), host=host, phase=phase, stage=stage,
    )  # fmt: skip
