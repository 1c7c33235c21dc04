"""Tensor parallelism from a plan given as plain data: module-name pattern -> style name."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from tune.dist.module_matching import name_matches

logger = logging.getLogger(__name__)

# Activations are [B, T, D]: sequence parallel shards dim 1.
_SEQ = Shard(1)

STYLES: dict[str, Callable[[], ParallelStyle]] = {
    # nn.Linear: shard output features; replicated input, output stays sharded (local tensor).
    "colwise": ColwiseParallel,
    # nn.Linear: shard output features, then all-gather the output (e.g. an LM head).
    "colwise_rep": lambda: ColwiseParallel(output_layouts=Replicate()),
    # nn.Linear after a sequence-parallel region: all-gather the sequence first.
    "colwise_seq": lambda: ColwiseParallel(input_layouts=_SEQ),
    # LM head after a sequence-parallel final norm: gather sequence in, full logits out.
    "colwise_seq_rep": lambda: ColwiseParallel(input_layouts=_SEQ, output_layouts=Replicate()),
    # nn.Linear: shard input features; input sharded on the last dim, output all-reduced.
    "rowwise": RowwiseParallel,
    # nn.Linear: shard input features, reduce-scatter the output along the sequence.
    "rowwise_seq": lambda: RowwiseParallel(output_layouts=_SEQ),
    # nn.Embedding: shard the vocabulary; replicated token ids in, all-reduced output.
    "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
    # nn.Embedding: shard the vocabulary, reduce-scatter the output along the sequence.
    "embedding_rowwise_seq": lambda: RowwiseParallel(input_layouts=Replicate(), output_layouts=_SEQ),
    # Norms (and other position-wise modules): run on the local sequence shard.
    "sequence_parallel": lambda: SequenceParallel(sequence_dim=1),
    # Per-head modules (q/k norms) applied to local heads [B, T, heads / tp, head_dim]: their
    # replicated parameters see only local heads, so their gradients are summed over TP ranks.
    "head_sharded": lambda: SequenceParallel(sequence_dim=2, use_local_output=True),
}

TPPlan = Mapping[str, "str | ParallelStyle"]


def _distribute(
    module: nn.Module, names: list[str], mesh: DeviceMesh, placement: Placement, src: int | None
) -> None:
    for name in names:
        param = module._parameters[name]
        assert param is not None
        dtensor = distribute_tensor(param, mesh, [placement], src_data_rank=src)
        module.register_parameter(name, nn.Parameter(dtensor, requires_grad=param.requires_grad))


class _ColwiseWithAdapters(ColwiseParallel):
    """Colwise for an ``nn.Linear`` carrying inner linears (LoRA ``lora_A`` / ``lora_B``).

    The inner linear producing the layer's ``out_features`` (``lora_B``) is sharded like the
    weight, so the adapter output is sharded like the base output; the others (``lora_A``) are
    replicated. Parameters of the layer itself with a leading ``out_features`` dimension (weight,
    bias, a DoRA magnitude) are sharded on dim 0.
    """

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        if not name:  # the adapted layer itself comes first
            self._out = module.out_features
            names = [k for k, p in module._parameters.items() if p is not None and p.shape[:1] == (self._out,)]
        elif isinstance(module, nn.Linear) and module.out_features == self._out:
            names = [k for k, p in module._parameters.items() if p is not None]
        else:
            return  # replicated by distribute_module
        _distribute(module, names, device_mesh, Shard(0), self.src_data_rank)


class _RowwiseWithAdapters(RowwiseParallel):
    """Rowwise for an ``nn.Linear`` carrying inner linears (LoRA ``lora_A`` / ``lora_B``).

    The inner linear reading the layer's ``in_features`` (``lora_A``) is sharded like the weight
    (its output is then a partial sum, like the base output's, reduced together with it); the
    others (``lora_B``) and the bias are replicated.
    """

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        if not name:
            self._in = module.in_features
        elif not (isinstance(module, nn.Linear) and module.in_features == self._in):
            return  # replicated by distribute_module
        _distribute(module, ["weight"], device_mesh, Shard(1), self.src_data_rank)


def _with_inner_linears(name: str, module: nn.Module, style: ParallelStyle) -> ParallelStyle:
    """The style to apply to ``module``: adapter-aware when an ``nn.Linear`` has inner layers."""
    if not isinstance(module, nn.Linear) or not any(True for _ in module.children()):
        return style
    adapted: dict[type, type] = {
        ColwiseParallel: _ColwiseWithAdapters,
        RowwiseParallel: _RowwiseWithAdapters,
    }
    if type(style) not in adapted:
        raise ValueError(
            f"{name}: {type(module).__name__} holds inner layers "
            f"({[n for n, _ in module.named_children()]}); only the plain colwise/rowwise styles "
            f"shard such a layer, got {type(style).__name__}"
        )
    style = copy.copy(style)
    style.__class__ = adapted[type(style)]
    return style


def resolve_style(style: str | ParallelStyle, pattern: str = "") -> ParallelStyle:
    """A ParallelStyle object from a style name (see ``STYLES``) or an object passed through."""
    if isinstance(style, ParallelStyle):
        return style
    if isinstance(style, str) and style in STYLES:
        return STYLES[style]()
    raise ValueError(
        f"tensor-parallel plan entry {pattern!r}: unknown style {style!r}; "
        f"expected one of {sorted(STYLES)} or a torch ParallelStyle"
    )


def _check_module(name: str, module: nn.Module, style: ParallelStyle, tp: int) -> None:
    if isinstance(style, (ColwiseParallel, RowwiseParallel)) and not isinstance(
        module, (nn.Linear, nn.Embedding)
    ):
        raise ValueError(
            f"{name}: {type(style).__name__} shards nn.Linear / nn.Embedding weights, got "
            f"{type(module).__name__}; apply tensor parallel before swapping in layers that are "
            f"not nn.Linear subclasses (quantized layers, other adapter classes)"
        )
    if isinstance(module, nn.Linear):
        if isinstance(style, ColwiseParallel) and module.out_features % tp:
            raise ValueError(
                f"{name}: colwise sharding needs out_features={module.out_features} divisible by "
                f"the tensor-parallel degree {tp}"
            )
        if isinstance(style, RowwiseParallel) and module.in_features % tp:
            raise ValueError(
                f"{name}: rowwise sharding needs in_features={module.in_features} divisible by "
                f"the tensor-parallel degree {tp}"
            )
    if isinstance(module, nn.Embedding) and module.num_embeddings % tp:
        raise ValueError(
            f"{name}: vocabulary sharding needs num_embeddings={module.num_embeddings} divisible "
            f"by the tensor-parallel degree {tp}"
        )


def match_plan(model: nn.Module, plan: TPPlan) -> list[tuple[str, nn.Module, str]]:
    """Pair every module of ``model`` with the one plan pattern it matches.

    Args:
        model: the model to parallelize.
        plan: {module-name pattern: style}; fnmatch globs (``layers.*.attn.q_proj``) or
            ``re:<regex>`` patterns against fully qualified module names.

    Returns:
        (name, module, pattern) for each matched module, in definition order.
    """
    matched: dict[str, tuple[nn.Module, str]] = {}
    for pattern in plan:
        hits = [(n, m) for n, m in model.named_modules() if n and name_matches(pattern, n)]
        if not hits:
            raise ValueError(
                f"tensor-parallel plan pattern {pattern!r} matches no module of "
                f"{type(model).__name__}; module names look like "
                f"{[n for n, _ in model.named_modules() if n][:8]}"
            )
        for name, module in hits:
            if name in matched:
                raise ValueError(
                    f"module {name!r} is matched by two plan patterns: {matched[name][1]!r} "
                    f"and {pattern!r}"
                )
            matched[name] = (module, pattern)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(((n, m, p) for n, (m, p) in matched.items()), key=lambda x: order[x[0]])


def _check_tied(model: nn.Module, names: set[str]) -> None:
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    for fqns in owners.values():
        modules = {f.rsplit(".", 1)[0] if "." in f else "" for f in fqns}
        if len(modules) > 1 and modules & names:
            raise ValueError(
                f"parameters {fqns} are tied across modules and at least one of them is in the "
                f"tensor-parallel plan; sharding would untie them. Keep tied modules out of the "
                f"plan (replicated) or untie the weights first"
            )


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, plan: TPPlan) -> nn.Module:
    """Shard the modules named in ``plan`` across ``tp_mesh`` (in place).

    Attention modules must compute their head count from the projection output
    (``q.view(B, T, -1, head_dim)``), so a colwise q/k/v shard runs ``n_heads / tp`` local heads
    with no change to the model; ``n_heads`` and ``n_kv_heads`` must be divisible by the TP degree.

    An ``nn.Linear`` subclass holding inner ``nn.Linear`` layers (LoRA factors, e.g. tune-peft's
    ``LoRALinear``) is sharded together with them, so adapters may be injected before TP:
    colwise shards the inner layer producing ``out_features`` (``lora_B``) and replicates the
    rest (``lora_A``); rowwise shards the inner layer reading ``in_features`` (``lora_A``) and
    replicates the rest. The adapter output then has the base output's layout.

    Args:
        model: a plain model (apply TP before FSDP).
        tp_mesh: a 1-D mesh (e.g. ``mesh["tp"]``).
        plan: {module-name pattern: style name or ParallelStyle}; style names are the keys of
            ``STYLES`` ("colwise", "rowwise", "colwise_rep", "rowwise_seq", "colwise_seq",
            "colwise_seq_rep", "embedding_rowwise", "embedding_rowwise_seq",
            "sequence_parallel", "head_sharded").

    Returns:
        The same model, with matched parameters turned into DTensors on ``tp_mesh``.
    """
    if tp_mesh.ndim != 1:
        raise ValueError(f"apply_tp needs a 1-D mesh, got {tp_mesh.ndim}-D {tp_mesh.mesh_dim_names}")
    tp = tp_mesh.size()
    resolved = [
        (n, m, _with_inner_linears(n, m, resolve_style(plan[p], p)))
        for n, m, p in match_plan(model, plan)
    ]
    _check_tied(model, {n for n, _, _ in resolved})
    for name, module, style in resolved:
        _check_module(name, module, style, tp)
    # SequenceParallel re-creates norm weights as trainable Parameters: keep frozen ones frozen.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for name, module, style in resolved:
        parallelize_module(module, tp_mesh, style)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    logger.debug("tensor parallel (degree %d) applied to %d modules", tp, len(resolved))
    return model
