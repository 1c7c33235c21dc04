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
  gradients for the reduce-scatter.

The peak is the largest of three moments: the end of forward (every saved activation and the loss
alive), the start of backward (saved activations, a recomputed block, the transient tensors of
one block's backward: ``BACKWARD_WORKSPACE_PER_TOKEN``) and the end of backward (every gradient
alive). Every constant was measured on CPU against real steps of tune.models' decoder (the
recipes' ``tune plan`` test: 14 runs within 15%). Sizes are bytes.

    est = estimate_memory(ModelShape(...), ParameterCounts(...), TrainingLayout(seq_len=4096))
    est.total, est.rows()
    best = recommend_layout(shape, params, layout, world_size=8, device_bytes=80 * 2**30)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

GIB = 2**30

# Optimizer state per trainable element: (copies in the parameter dtype, extra bytes).
OPTIMIZER_STATE: dict[str, tuple[float, float]] = {
    "adamw": (2.0, 0.0),
    "adam": (2.0, 0.0),
    "adamw8bit": (0.0, 2.0 + 2 * 4 / 256),  # two uint8 moments, a float32 scale per 256
    "adamw4bit": (0.0, 1.0 + 2 * 4 / 128),
    "sgd": (0.0, 0.0),
    "sgd_momentum": (1.0, 0.0),
}

# Tensors autograd saves in one decoder block, per token, in elements (measured, see module doc):
# always the two norms' inputs, SDPA's q, k, v and output (the o-projection's input is a view of
# it), the MLP's gate, act(gate) and up; a Linear also saves its input when its weight is trained
# or adapted (``ParameterCounts.trained_inputs``): the normed states of q/k/v ("qkv") and of
# gate/up ("gate_up") [width each], act(gate) * up for down ("down") [ffn].
SAVED_ALWAYS = {"width": 2, "q_heads": 2, "kv_heads": 2, "ffn": 3}
SAVED_IF_TRAINED = {"qkv": ("width", 1), "gate_up": ("width", 1), "down": ("ffn", 1)}
SAVED_FLOAT32_PER_TOKEN = 2  # the two norms' reciprocal RMS, float32
SAVED_FLOAT32_PER_TOKEN_HEAD = 1  # SDPA's log-sum-exp, float32, per query head
ROTARY_FLOAT32_PER_TOKEN_HEAD_DIM = 2  # cos and sin, float32, shared by every block
# Transient tensors of one block's backward, per token, in elements of the ffn width.
BACKWARD_WORKSPACE_PER_TOKEN = 3
# Logits-sized float32 tensors alive at once: logits, log-softmax, its gradient (plain CE);
# one chunk's logits and logsumexp's temporary (fused CE). Measured on CPU.
PLAIN_CE_LOGITS_COPIES = 3
FUSED_CE_CHUNK_COPIES = 2


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer.

    Args:
        hidden_size: model width d.
        intermediate_size: gated-MLP width I (a MoE block: the active experts' total).
        num_layers: blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads.
        head_dim: per-head width.
        vocab_size: output rows V.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int


@dataclass(frozen=True)
class ParameterCounts:
    """What a model holds once prepared for its method (LoRA adapters added, NF4 applied).

    Args:
        trainable: trainable elements.
        frozen: frozen elements kept in the parameter dtype (NF4 weights not included).
        quantized_bytes: bytes of frozen NF4 (or other quantized) weights.
        root: elements outside the blocks (embeddings, head, final norm), counted once if tied.
        head_trainable: the output weight is trained (its gradient is ``vocab * hidden``).
        largest_quantized: elements of the largest quantized weight, dequantized per call.
        trained_inputs: which block Linears save their input (``SAVED_IF_TRAINED`` keys): those
            whose weight is trained or carries an adapter.
        adapter_saved_per_token: further elements one block's adapters save per token (LoRA:
            ``r`` per adapted Linear; DoRA: twice the adapted Linears' output widths).
    """

    trainable: int
    frozen: int
    quantized_bytes: int = 0
    root: int = 0
    head_trainable: bool = False
    largest_quantized: int = 0
    trained_inputs: frozenset[str] = frozenset(SAVED_IF_TRAINED)
    adapter_saved_per_token: int = 0

    @property
    def total(self) -> int:
        """Trainable plus frozen float elements."""
        return self.trainable + self.frozen


@dataclass(frozen=True)
class TrainingLayout:
    """One rank's share of a training step.

    Args:
        seq_len: tokens per sequence.
        micro_batch_size: sequences per forward/backward.
        dtype_bytes: bytes per parameter and activation element (4 float32, 2 bfloat16).
        optimizer: a key of ``OPTIMIZER_STATE``.
        gradient_accumulation: micro-batches per optimizer step (> 1: gradients live in forward).
        fsdp_size: ranks parameters, gradients and optimizer state are sharded over (1: none).
        tp_size: tensor-parallel degree (splits block weights and activations).
        activation_checkpointing: recompute block activations in backward.
        activation_offloading: keep saved activations in host memory (CUDA).
        fused_ce: chunked cross-entropy fused with the head (no full logits).
        ce_chunk_size: tokens per chunk of the fused cross-entropy.
        labelled_fraction: share of tokens with a label (the fused loss projects only those).
        cpu_offload: FSDP keeps sharded parameters, gradients and optimizer state on the host.
        sequence_parallel: with TP, norms and the residual stream split along the sequence.
    """

    seq_len: int
    micro_batch_size: int = 1
    dtype_bytes: int = 2
    optimizer: str = "adamw"
    gradient_accumulation: int = 1
    fsdp_size: int = 1
    tp_size: int = 1
    activation_checkpointing: bool = False
    activation_offloading: bool = False
    fused_ce: bool = True
    ce_chunk_size: int = 1024
    labelled_fraction: float = 1.0
    cpu_offload: bool = False
    sequence_parallel: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_STATE:
            raise ValueError(
                f"TrainingLayout.optimizer: unknown {self.optimizer!r}; known: "
                f"{sorted(OPTIMIZER_STATE)}"
            )
        for name in ("seq_len", "micro_batch_size", "dtype_bytes", "gradient_accumulation",
                     "fsdp_size", "tp_size", "ce_chunk_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingLayout.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ValueError(
                f"TrainingLayout.labelled_fraction must be in (0, 1], got {self.labelled_fraction}"
            )


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes on one rank's device, by part (``total`` is their sum), and host bytes.

    Args:
        parameters: sharded and root parameters (float and quantized).
        gradients: gradients alive at the peak.
        optimizer_state: optimizer moments.
        activations: saved activations at the peak (and one block's backward transients).
        loss: logits or fused cross-entropy chunks and the hidden-state gradient.
        communication: FSDP2's gathered parameters and unsharded gradients.
        host: bytes moved to the host (CPU offload of parameters/state, offloaded activations).
        phase: ``end of forward``, ``start of backward`` or ``end of backward``: the peak's moment.
    """

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    loss: int
    communication: int
    host: int = 0
    phase: str = "start of backward"

    @property
    def total(self) -> int:
        """Peak device bytes."""
        return (self.parameters + self.gradients + self.optimizer_state + self.activations
                + self.loss + self.communication)  # fmt: skip

    def rows(self) -> list[tuple[str, int]]:
        """``(part, bytes)`` in table order, ending with the total."""
        parts = [(f.name.replace("_", " "), getattr(self, f.name))
                 for f in dataclasses.fields(self) if f.name not in ("host", "phase")]  # fmt: skip
        return [*parts, ("total (peak)", self.total)]


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
        tp_size: heads and the MLP width are split over TP ranks.
        sequence_parallel: the norms' tensors are split along the sequence too (TP only).
    """
    widths = {
        "width": shape.hidden_size,
        "q_heads": shape.num_heads * shape.head_dim,
        "kv_heads": shape.num_kv_heads * shape.head_dim,
        "ffn": shape.intermediate_size,
    }
    trained = params.trained_inputs if params is not None else frozenset(SAVED_IF_TRAINED)
    # Under TP, heads and the MLP width are split; the norms' tensors too with sequence
    # parallelism, but a Linear's saved input is the whole sequence gathered.
    split = sum(widths[width] * count for width, count in SAVED_ALWAYS.items() if width != "width")
    split += widths["ffn"] * (1 if "down" in trained else 0)
    split += params.adapter_saved_per_token if params is not None else 0
    norms = widths["width"] * SAVED_ALWAYS["width"]
    gathered = widths["width"] * sum(1 for key in ("qkv", "gate_up") if key in trained)
    elements = split / tp_size + norms / (tp_size if sequence_parallel else 1) + gathered
    fp32 = SAVED_FLOAT32_PER_TOKEN / (tp_size if sequence_parallel else 1)
    fp32 += SAVED_FLOAT32_PER_TOKEN_HEAD * shape.num_heads / tp_size
    return elements, fp32


def _loss_bytes(shape: ModelShape, layout: TrainingLayout) -> int:
    tokens = layout.seq_len * layout.micro_batch_size
    d, vocab, s = shape.hidden_size, shape.vocab_size, layout.dtype_bytes
    if not layout.fused_ce:
        logits = tokens * vocab * 4
        if layout.tp_size > 1:  # the head's [tokens, vocab / tp] shards, gathered whole
            return int((PLAIN_CE_LOGITS_COPIES + 1 + 1 / layout.tp_size) * logits)
        return PLAIN_CE_LOGITS_COPIES * logits
    labelled = math.ceil(tokens * layout.labelled_fraction)
    chunk = min(layout.ce_chunk_size, labelled)
    # gradient of the hidden states, the labelled rows, a float32 chunk of logits
    return tokens * d * s + labelled * d * s + FUSED_CE_CHUNK_COPIES * chunk * vocab * 4


def estimate_memory(
    shape: ModelShape, params: ParameterCounts, layout: TrainingLayout
) -> MemoryEstimate:
    """Peak bytes one rank holds during a training step (see the module docstring).

    Args:
        shape: the model's sizes.
        params: its parameters once prepared for the training method.
        layout: sequence, batch, dtype, optimizer and parallel layout.
    """
    s, shards = layout.dtype_bytes, layout.fsdp_size * layout.tp_size
    tokens = layout.seq_len * layout.micro_batch_size
    d, L = shape.hidden_size, shape.num_layers

    # ---- parameters, gradients and optimizer state --------------------------------------------
    block_elems = max(params.total - params.root, 0)
    root_elems = min(params.root, params.total)
    block_param_bytes = block_elems * s + params.quantized_bytes
    # The root's parameters (embeddings, head) stay whole on every rank for the whole step.
    parameters = block_param_bytes // shards + root_elems * s // layout.tp_size
    grads = params.trainable * s // shards
    copies, extra = OPTIMIZER_STATE[layout.optimizer]
    optimizer = int(params.trainable * (copies * s + extra)) // shards
    host = 0
    if layout.cpu_offload and layout.fsdp_size > 1:
        host = parameters + grads + optimizer
        parameters, grads, optimizer = root_elems * s // layout.tp_size, 0, 0

    # ---- activations and loss -----------------------------------------------------------------
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
        saved, recomputed = L * boundary + shared, block_bytes
    elif layout.activation_offloading:
        saved = min(L, 2) * block_bytes + shared
        host += max(L - 2, 0) * int(block_bytes)
    else:
        saved = L * block_bytes + shared
    workspace = BACKWARD_WORKSPACE_PER_TOKEN * tokens * shape.intermediate_size * s / layout.tp_size
    workspace += params.largest_quantized * s  # an NF4 weight dequantized for one matmul
    loss = _loss_bytes(shape, layout)
    head_grad = shape.vocab_size * d * 4 // layout.tp_size if params.head_trainable else 0

    # ---- FSDP2 buffers: gathered block parameters (prefetch: two) and unsharded gradients -------
    comm = 0
    if layout.fsdp_size > 1:
        per_block = block_param_bytes / max(L, 1) / layout.tp_size
        comm = int(2 * per_block + params.trainable * s / max(L, 1) / layout.tp_size)

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
            activations=int(workspace), loss=0, communication=comm, host=host, phase=phase,
        )  # fmt: skip
    grad_part = live_grads + (fused_head_grad if phase == "end of forward" else head_grad)
    activations = saved + (0 if phase == "end of forward" else recomputed + workspace + boundary)
    return MemoryEstimate(
        parameters=int(parameters), gradients=int(grad_part), optimizer_state=optimizer,
        activations=int(activations), loss=int(loss) if phase == "end of forward" else 0,
        communication=comm, host=host, phase=phase,
    )  # fmt: skip


@dataclass(frozen=True)
class LayoutChoice:
    """A candidate layout and its estimate."""

    layout: TrainingLayout
    estimate: MemoryEstimate
    fits: bool


def candidate_layouts(base: TrainingLayout, world_size: int) -> Iterator[TrainingLayout]:
    """Layouts over ``world_size`` ranks, cheapest in throughput first.

    Order: no CPU offload before offload, no checkpointing before checkpointing (kept on when
    ``base`` has it), less TP before more; FSDP over the remaining ranks.
    """
    tp_sizes = [t for t in (1, 2, 4, 8) if world_size % t == 0]
    checkpointing = (True,) if base.activation_checkpointing else (False, True)
    for offload in (False, True) if world_size > 1 else (False,):
        for ckpt in checkpointing:
            for tp in tp_sizes:
                yield dataclasses.replace(
                    base, tp_size=tp, fsdp_size=world_size // tp,
                    activation_checkpointing=ckpt, cpu_offload=offload,
                )  # fmt: skip


def recommend_layout(
    shape: ModelShape,
    params: ParameterCounts,
    base: TrainingLayout,
    *,
    world_size: int,
    device_bytes: int,
    margin: float = 0.1,
) -> list[LayoutChoice]:
    """Every candidate layout with its estimate; the first that fits is the recommendation.

    Args:
        shape: the model.
        params: its prepared parameters.
        base: the sequence, batch, dtype and optimizer (its parallel fields are replaced).
        world_size: ranks of the run.
        device_bytes: memory of one device.
        margin: fraction of ``device_bytes`` kept free (allocator fragmentation, CUDA context).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    budget = device_bytes * (1.0 - margin)
    choices = []
    for layout in candidate_layouts(base, world_size):
        est = estimate_memory(shape, params, layout)
        choices.append(LayoutChoice(layout, est, est.total <= budget))
    return choices
