"""The inputs and output of ``tune.dist.memory_plan``: a model's sizes, its prepared parameter
counts, one rank's training layout, and the per-part estimate (see that module's docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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

# Tensors autograd saves in one decoder block, per token, in elements (measured, see memory_plan):
# always the two norms' inputs, SDPA's q, k, v and output (the o-projection's input is a view of
# it), the MLP's gate and up (tune.models' gated function recomputes act(gate) in the backward;
# for MoE experts the [N * k, 2 * moe width] gate-up rows); a Linear also saves its input when
# its weight is trained or adapted (``ParameterCounts.trained_inputs``): the normed states of
# q/k/v ("qkv") and of gate/up ("gate_up") [width each], act(gate) * up for down ("down") [ffn].
SAVED_ALWAYS = {"width": 2, "q_heads": 2, "kv_heads": 2, "ffn": 2}
SAVED_IF_TRAINED = {"qkv": ("width", 1), "gate_up": ("width", 1), "down": ("ffn", 1)}
# Micro-batches whose activations a pipeline's first stage keeps at its peak, by schedule
# (``tune.dist.pipeline.SCHEDULES``' keys): "all" every micro-batch of the step (GPipe, looped
# BFS run all forwards first), "stages" ``min(pp, micro-batches)`` (1F1B's warm-up; the
# interleaved and zero-bubble schedules are counted alike).
PIPELINE_IN_FLIGHT: dict[str, str] = {
    "gpipe": "all",
    "1f1b": "stages",
    "interleaved_1f1b": "stages",
    "looped_bfs": "all",
    "zero_bubble": "stages",
    "zbv_zero_bubble": "stages",
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer.

    Args:
        hidden_size: model width d.
        intermediate_size: gated-MLP width I of a dense block.
        num_layers: blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads.
        head_dim: per-head width.
        vocab_size: output rows V.
        num_experts: routed experts E per block (0: a dense model; every block counts as MoE).
        experts_per_token: experts k each token is routed to.
        moe_intermediate_size: hidden width of one routed expert.
        shared_expert_intermediate_size: width of an always-active shared expert (0: none).
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    def __post_init__(self) -> None:
        if self.num_experts < 0:
            raise ValueError(f"ModelShape.num_experts must be >= 0, got {self.num_experts}")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(
                f"ModelShape.experts_per_token must be in [1, num_experts={self.num_experts}], "
                f"got {self.experts_per_token}"
            )
        if self.num_experts and self.moe_intermediate_size < 1:
            raise ValueError(
                f"ModelShape.moe_intermediate_size must be >= 1 with num_experts="
                f"{self.num_experts}, got {self.moe_intermediate_size}"
            )

    @property
    def ffn_width(self) -> int:
        """Feed-forward width one token passes through: I, or k routed experts plus the shared."""
        if not self.num_experts:
            return self.intermediate_size
        routed = self.experts_per_token * self.moe_intermediate_size
        return routed + self.shared_expert_intermediate_size


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
        experts: elements of the routed experts (included in ``trainable``/``frozen``).
        experts_trainable: the trainable part of ``experts``.
    """

    trainable: int
    frozen: int
    quantized_bytes: int = 0
    root: int = 0
    head_trainable: bool = False
    largest_quantized: int = 0
    trained_inputs: frozenset[str] = frozenset(SAVED_IF_TRAINED)
    adapter_saved_per_token: int = 0
    experts: int = 0
    experts_trainable: int = 0

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
        pp_size: pipeline stages (one per rank; the layers split evenly, rounded up).
        pp_microbatches: micro-batches per pipeline step (ignored when ``pp_size`` is 1).
        pp_schedule: a key of ``PIPELINE_IN_FLIGHT`` (``tune.dist.pipeline.SCHEDULES``).
        cp_size: context-parallel degree: each rank holds ``seq_len / cp_size`` of each sequence.
        ep_size: expert-parallel degree: routed experts split over ``ep_size`` ranks.
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
    pp_size: int = 1
    pp_microbatches: int = 1
    pp_schedule: str = "1f1b"
    cp_size: int = 1
    ep_size: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_STATE:
            raise ValueError(
                f"TrainingLayout.optimizer: unknown {self.optimizer!r}; known: "
                f"{sorted(OPTIMIZER_STATE)}"
            )
        if self.pp_schedule not in PIPELINE_IN_FLIGHT:
            raise ValueError(
                f"TrainingLayout.pp_schedule: unknown {self.pp_schedule!r}; known: "
                f"{sorted(PIPELINE_IN_FLIGHT)}"
            )
        for name in ("seq_len", "micro_batch_size", "dtype_bytes", "gradient_accumulation",
                     "fsdp_size", "tp_size", "ce_chunk_size", "pp_size", "pp_microbatches",
                     "cp_size", "ep_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingLayout.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ValueError(
                f"TrainingLayout.labelled_fraction must be in (0, 1], got {self.labelled_fraction}"
            )
        if self.pp_size > 1 and self.micro_batch_size % self.pp_microbatches:
            raise ValueError(
                f"TrainingLayout.pp_microbatches must divide micro_batch_size="
                f"{self.micro_batch_size}, got {self.pp_microbatches}"
            )
        if self.cp_size > self.seq_len:
            raise ValueError(
                f"TrainingLayout.cp_size must be at most seq_len={self.seq_len}, got {self.cp_size}"
            )

    @property
    def microbatches(self) -> int:
        """Micro-batches one forward/backward is split into (1 without pipeline parallelism)."""
        return self.pp_microbatches if self.pp_size > 1 else 1

    @property
    def tokens(self) -> float:
        """Tokens of one (pipeline) micro-batch on one rank: ``seq_len * batch / (cp * mb)``."""
        return self.seq_len * self.micro_batch_size / (self.cp_size * self.microbatches)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes on one rank's device, by part (``total`` is their sum), and host bytes.

    Args:
        parameters: sharded and root parameters (float and quantized).
        gradients: gradients alive at the peak.
        optimizer_state: optimizer moments.
        activations: saved activations at the peak (and one block's backward transients).
        loss: logits or fused cross-entropy chunks and the hidden-state gradient.
        communication: FSDP2's gathered parameters and unsharded gradients, pipeline send/receive
            buffers, ring attention's K/V blocks, expert all-to-all buffers.
        host: bytes moved to the host (CPU offload of parameters/state, offloaded activations).
        phase: ``end of forward``, ``start of backward`` or ``end of backward``: the peak's moment.
        stage: the pipeline stage of the estimate: ``all`` (no pipeline), ``first`` or ``last``.
    """

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    loss: int
    communication: int
    host: int = 0
    phase: str = "start of backward"
    stage: str = "all"

    @property
    def total(self) -> int:
        """Peak device bytes."""
        return (self.parameters + self.gradients + self.optimizer_state + self.activations
                + self.loss + self.communication)  # fmt: skip

    def rows(self) -> list[tuple[str, int]]:
        """``(part, bytes)`` in table order, ending with the total."""
        parts = [(f.name.replace("_", " "), getattr(self, f.name)) for f in dataclasses.fields(self)
                 if f.name not in ("host", "phase", "stage")]  # fmt: skip
        return [*parts, ("total (peak)", self.total)]
