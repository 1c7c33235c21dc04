"""Expert parallelism: stacked experts sharded over an ``ep`` mesh dimension, tokens exchanged
with all-to-all.

Each rank of an EP group keeps ``E / ep`` consecutive experts (its slice along dim 0 of every
stacked expert parameter, a DTensor ``Shard(0)`` on ``mesh["ep"]``, so full state dicts and DCP
checkpoints see whole ``[E, ...]`` tensors and reshard across EP degrees). An expert-parallel
forward, for the ``N`` tokens of this rank and their ``k`` chosen experts::

    order    = argsort(selected_experts.flatten())     # (token, slot) pairs grouped by expert
    counts   = all_to_all(tokens_per_expert)           # how many rows each peer sends my experts
    x_recv   = all_to_all(x[order // k])               # rows for my experts, peer-major
    w_recv   = all_to_all(weights[order])              # each row's routing weight travels with it
    y_recv   = experts_local(x_recv, local ids, w_recv) # weighted rows
    y_sorted = all_to_all(y_recv)                      # back to the ranks that own the tokens
    out      = sum_k unsort(y_sorted)                  # [N, dim]

Both all-to-alls are differentiable (backward sends gradients the reverse way), so an expert's
gradient sums the contributions of every EP peer's tokens.

Which ranks see which data: the EP ranks are data-parallel ranks (each reads its own batch), so
the non-expert parameters (attention, router, embeddings) are FSDP-sharded over all ``D``
data-parallel ranks as usual (their gradients are averaged over ``D``), and the experts over the
``D / ep`` data-parallel ranks outside their EP group (``mesh["expert_dp_shard"]``, see
``build_expert_mesh``), whose FSDP groups average over ``D / ep``. Since an expert's local
gradient already sums its ``ep`` peers' contributions, the forward scales it by ``1 / ep``
(``sum / ep / (D / ep) = sum / D``): every parameter then holds the gradient of the mean over the
data-parallel ranks' losses, as without EP. (A scale in the graph, not FSDP's gradient divide
factor, which gloo cannot apply and a one-rank FSDP group skips.) Tensor-parallel peers (TP for
attention, no sequence parallelism) read the same tokens: they keep the same experts and each
exchanges tokens with the ranks of its own ``tp`` index.

The experts module protocol (duck-typed; ``tune.models.GroupedExperts`` follows it):

- direct parameters stacked over experts on dim 0 (``gate_up_proj`` [E, 2H, D],
  ``down_proj`` [E, D, H], any others with a leading ``E``), and ``num_experts`` = E;
- optionally sub-modules whose parameters are all stacked the same way, such as per-expert
  adapter factors (tune-peft's expert LoRA keeps ``param_lora.<param>.lora_A`` [E, r, in] and
  ``lora_B`` [E, out, r] there): every parameter under the experts module is sharded alike
  (``Shard(0)`` on ``ep``, then FSDP over the expert data-parallel dims), its gradient scaled by
  ``1 / ep``, and read as its local shard while the forward runs, so a weight computed from the
  base and the factors (``W + s * B @ A``) covers the local experts; a parameter under it
  without a leading ``E`` is refused;
- ``forward(x [N, D], selected_experts [N, k] int64, weights [N, k], tokens_per_expert [E])
  -> [N, D]``, the weighted sum of the selected experts' outputs, reading its parameters as
  attributes (so the local shards can stand in for them during the call).

An EP plan is plain data like a TP plan: ``{module-name pattern: "grouped_experts"}``, e.g.
``{"layers.*.mlp.experts": "grouped_experts"}`` (``MOE_EP_PLAN``) for the MoE families whose
blocks keep their experts at ``layers.<i>.mlp.experts``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from tune.dist.mesh import DP_REPLICATE, EP, EXPERT_DP_SHARD
from tune.dist.module_matching import name_matches

logger = logging.getLogger(__name__)

EP_STYLES = ("grouped_experts",)
EPPlan = Mapping[str, str]
MOE_EP_PLAN: dict[str, str] = {"layers.*.mlp.experts": "grouped_experts"}


class _AllToAllRows(torch.autograd.Function):
    """``dist.all_to_all_single`` over dim 0 with uneven splits; backward sends grads back."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(grad_in, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_in, None, None, None


def all_to_all_rows(
    x: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int], group: Any
) -> torch.Tensor:
    """Differentiable all-to-all of the rows of ``x`` [R, ...]: row block i goes to peer i.

    Args:
        x: [sum(input_split_sizes), ...] rows to send, grouped by destination peer.
        output_split_sizes: rows received from each peer.
        input_split_sizes: rows sent to each peer.
        group: the process group.

    Returns:
        [sum(output_split_sizes), ...] the received rows, grouped by source peer.
    """
    out: torch.Tensor = _AllToAllRows.apply(x, output_split_sizes, input_split_sizes, group)
    return out


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def _owner_and_leaf(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (module.get_submodule(prefix) if prefix else module), leaf


@contextlib.contextmanager
def _local_parameters(
    module: nn.Module,
    names: tuple[str, ...],
    grad_scale: float,
    whole: frozenset[str] = frozenset(),
    experts: tuple[int, int] = (0, 0),
) -> Iterator[list[torch.Tensor]]:
    """Let ``module`` and its sub-modules read the local shards (differentiable ``to_local``) of
    the DTensor params ``names`` (relative to ``module``), their gradients scaled by
    ``grad_scale``; params in ``whole`` (quantized stacks kept whole) are read as their
    ``experts = (start, count)`` slice. Yields the local tensors."""
    owners = [_owner_and_leaf(module, name) for name in names]
    saved = [(name, owner, leaf, owner._parameters[leaf]) for name, (owner, leaf) in
             zip(names, owners, strict=True)]  # fmt: skip
    try:
        locals_ = []
        for name, owner, leaf, param in saved:
            assert param is not None
            if name in whole:  # a quantized subclass dequantizes, then the slice is taken
                local = param.narrow(0, experts[0], experts[1])
            else:
                local = param.to_local() if isinstance(param, DTensor) else param
            # Plain tensors in _parameters for the call only (what functional_call does).
            scaled = _ScaleGrad.apply(local, grad_scale)
            owner._parameters[leaf] = scaled
            locals_.append(scaled)
        yield locals_
    finally:
        for _name, owner, leaf, param in saved:
            owner._parameters[leaf] = param


class ExpertParallel:
    """Marker base of the expert-parallel classes ``apply_ep`` swaps experts modules into."""

    _ep_base: type[nn.Module]
    _ep_group: Any
    _ep_size: int
    _ep_param_names: tuple[str, ...]
    _ep_whole: frozenset[str]

    def forward(
        self,
        x: torch.Tensor,
        selected_experts: torch.Tensor,
        weights: torch.Tensor,
        tokens_per_expert: torch.Tensor,
    ) -> torch.Tensor:
        """Expert-parallel forward of the experts protocol (see the module docstring).

        Args:
            x: [N, dim] this rank's tokens.
            selected_experts: [N, k] int64 global expert indices.
            weights: [N, k] routing weights, in the dtype of ``x``.
            tokens_per_expert: [E] int64 counts of ``selected_experts`` per global expert.

        Returns:
            [N, dim].
        """
        ep, group = self._ep_size, self._ep_group
        n, k = selected_experts.shape
        num_experts = tokens_per_expert.shape[0]
        local = num_experts // ep
        # Stable: each expert's rows stay in token order, as in the single-device experts.
        order = torch.argsort(selected_experts.reshape(-1), stable=True)  # [N*k]
        x_sorted = x[order // k]  # [N*k, dim], grouped by expert, hence by owning peer
        send_counts = tokens_per_expert.to(torch.int64).contiguous()  # [E] = [ep, local]
        recv_counts = torch.empty_like(send_counts)  # [ep, local]: peer p's rows for my experts
        dist.all_to_all_single(recv_counts, send_counts, group=group)
        # One host sync for the split sizes (the all-to-all needs them on the host).
        send_split = send_counts.view(ep, local).sum(dim=1).tolist()
        recv_by_peer = recv_counts.view(ep, local)
        recv_split = recv_by_peer.sum(dim=1).tolist()
        x_recv = all_to_all_rows(x_sorted, recv_split, send_split, group)  # [M, dim]
        # The routing weights travel with their rows: the experts scale their hidden rows by
        # them, the same arithmetic as one process (EP's parity with it depends on that).
        w_sorted = weights.reshape(-1)[order].unsqueeze(-1)  # [N*k, 1]
        w_recv = all_to_all_rows(w_sorted, recv_split, send_split, group)  # [M, 1]
        local_ids = torch.arange(local, device=x.device).repeat(ep)  # [ep * local]
        local_ids = torch.repeat_interleave(local_ids, recv_counts)  # [M], peer-major
        # 1 / ep: the local expert gradient sums the ep peers' tokens (see the module docstring).
        start = dist.get_rank(group) * local
        with _local_parameters(self, self._ep_param_names, 1.0 / ep,  # type: ignore[arg-type]
                               self._ep_whole, (start, local)) as params:  # fmt: skip
            if sum(recv_split):
                y_recv = self._ep_base.forward(
                    self, x_recv, local_ids.unsqueeze(1), w_recv, recv_by_peer.sum(dim=0)
                )  # [M, dim], weighted
            else:
                # No rows came (experts modules need not take zero tokens). The local experts
                # still get a zero gradient, as a single process gives the unused experts'
                # slices of its stacked parameters: FSDP peers then reduce the same parameters,
                # and the optimizer steps (weight decay) every shard alike.
                unused = sum(p.sum() for p in params) + w_recv.sum()
                y_recv = x_recv + 0.0 * unused  # [0, dim]
        y_sorted = all_to_all_rows(y_recv, send_split, recv_split, group)  # [N*k, dim], weighted
        return _sum_rows(y_sorted, order, k, n)


def _sum_rows(y_sorted: torch.Tensor, order: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """Each token's ``k`` weighted rows summed -> [N, dim], in the order and with the ops of
    ``tune.models.moe.sum_expert_rows`` (on the CPU a ``scatter_add`` over the rows sorted by
    expert; elsewhere a gather into [N, k, dim] and a sum), so EP adds in the same order as one
    process."""
    dim = y_sorted.shape[-1]
    if y_sorted.device.type == "cpu":
        index = (order // k).unsqueeze(1).expand(-1, dim)  # [N*k, dim], a view
        return y_sorted.new_zeros(n, dim).scatter_add_(0, index, y_sorted)
    positions = torch.arange(order.numel(), device=order.device)
    inverse = torch.empty_like(order).scatter_(0, order, positions)
    return y_sorted[inverse].view(n, k, dim).sum(dim=1)


_EP_CLASSES: dict[type, type] = {}


def _ep_class(cls: type[nn.Module]) -> type:
    if cls not in _EP_CLASSES:
        _EP_CLASSES[cls] = type(
            f"ExpertParallel{cls.__name__}", (ExpertParallel, cls), {"_ep_base": cls}
        )
    return _EP_CLASSES[cls]


def _ep_dim(mesh: DeviceMesh) -> DeviceMesh:
    names = mesh.mesh_dim_names or ()
    if EP in names:
        return mesh[EP]
    if mesh.ndim == 1:
        return mesh
    raise ValueError(f"expert mesh has dimensions {names}; expected an {EP!r} dimension")


def _quantized_stack(param: torch.Tensor) -> bool:
    """A frozen tensor subclass (tune-quant's ``NF4ExpertTensor``): DTensor cannot shard it, so
    every rank keeps the whole stack and reads its own experts' slice (dequantized)."""
    data = param.data if isinstance(param, nn.Parameter) else param
    quantized = type(data) not in (torch.Tensor, nn.Parameter) and not isinstance(data, DTensor)
    if quantized and param.requires_grad:
        raise ValueError(
            f"a trainable {type(data).__name__} expert stack cannot be expert-parallel; only "
            "frozen quantized stacks (QLoRA) are kept whole"
        )
    return quantized


def _check_experts(name: str, module: nn.Module, ep: int) -> tuple[str, ...]:
    num_experts = getattr(module, "num_experts", None)
    if not isinstance(num_experts, int):
        raise ValueError(
            f"{name}: {type(module).__name__} has no integer num_experts; an EP-sharded experts "
            f"module stacks its experts on dim 0 (see tune.dist.expert_parallel)"
        )
    if num_experts % ep:
        raise ValueError(
            f"{name}: num_experts={num_experts} is not divisible by the expert-parallel degree {ep}"
        )
    direct = [n for n, p in module._parameters.items() if p is not None]
    # Sub-module parameters (per-expert adapter factors) are sharded like the direct ones.
    params = dict(module.named_parameters(remove_duplicate=False))
    bad = {n: list(p.shape) for n, p in params.items() if p.shape[:1] != (num_experts,)}
    if not direct or bad:
        raise ValueError(
            f"{name}: every parameter of an expert-parallel experts module, sub-modules' "
            f"included, must be stacked with a leading num_experts={num_experts} dimension; got "
            f"{bad or 'no direct parameters'}"
        )
    return tuple(params)


def apply_ep(model: nn.Module, mesh: DeviceMesh, plan: EPPlan) -> list[str]:
    """Shard the experts modules named by ``plan`` over ``mesh["ep"]`` and make them dispatch.

    Every matched module keeps its name and parameter names; its stacked parameters (those of
    its sub-modules, e.g. per-expert LoRA factors, included) become DTensors ``Shard(0)`` on the
    ``ep`` dimension (rank i keeps experts
    ``[i * E / ep, (i + 1) * E / ep)``) and its class a subclass with the expert-parallel forward.
    A frozen quantized stack (tune-quant's ``NF4ExpertTensor``, QLoRA) cannot be a DTensor: every
    rank keeps it whole (4-bit) and reads its own experts' slice, dequantized, in the forward.
    Call on every rank with the same (identically initialised) model; rank 0's values are sent.

    Args:
        model: a plain single-device model, before FSDP.
        mesh: the expert mesh from ``build_expert_mesh`` (or any mesh with an ``ep`` dimension, or
            a 1-D mesh).
        plan: ``{module-name pattern: "grouped_experts"}`` (fnmatch, or ``"re:<regex>"``).

    Returns:
        The names of the modules made expert-parallel.
    """
    ep_mesh = _ep_dim(mesh)
    ep = ep_mesh.size()
    for pattern, style in plan.items():
        if style not in EP_STYLES:
            raise ValueError(f"EP plan {pattern!r}: unknown style {style!r}; expected {EP_STYLES}")
    matched = [
        (name, module)
        for name, module in model.named_modules()
        if name and any(name_matches(p, name) for p in plan)
    ]
    if not matched:
        raise ValueError(
            f"EP plan patterns {sorted(plan)} matched no module of {type(model).__name__}"
        )
    for name, module in matched:
        if isinstance(module, ExpertParallel):
            raise ValueError(f"{name} is already expert-parallel")
        names = _check_experts(name, module, ep)
        whole = set()
        for pname in names:
            owner, leaf = _owner_and_leaf(module, pname)
            param = owner._parameters[leaf]
            assert param is not None
            if _quantized_stack(param):  # frozen NF4 experts: whole on every rank, sliced at use
                whole.add(pname)
                continue
            dtensor = distribute_tensor(param.detach(), ep_mesh, [Shard(0)])
            owner.register_parameter(leaf, nn.Parameter(dtensor, requires_grad=param.requires_grad))
        module.__class__ = _ep_class(type(module))
        module._ep_group = ep_mesh.get_group()  # type: ignore[assignment]
        module._ep_size = ep  # type: ignore[assignment]
        module._ep_param_names = names  # type: ignore[assignment]
        module._ep_whole = frozenset(whole)  # type: ignore[assignment]
    logger.debug("expert parallel over %d ranks: %s", ep, [n for n, _ in matched])
    return [n for n, _ in matched]


def expert_parallel_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that ``apply_ep`` made expert-parallel, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ExpertParallel)]  # type: ignore[misc]


def apply_expert_fsdp(model: nn.Module, mesh: DeviceMesh, **fully_shard_kwargs: Any) -> int:
    """``fully_shard`` every expert-parallel module over the expert data-parallel dimension(s).

    Call before ``apply_fsdp`` (which then leaves those parameters to these groups).

    Args:
        model: a model after ``apply_ep``.
        mesh: the expert mesh from ``build_expert_mesh``.
        fully_shard_kwargs: passed to ``fully_shard`` (``reshard_after_forward``, ``mp_policy``,
            ``offload_policy``, ``ignored_params``).

    Returns:
        The number of modules sharded.
    """
    from torch.distributed.fsdp import fully_shard

    names = mesh.mesh_dim_names or ()
    if EXPERT_DP_SHARD not in names:
        raise ValueError(f"expert mesh has dimensions {names}; expected one from build_expert_mesh")
    if DP_REPLICATE in names and mesh[DP_REPLICATE].size() > 1:
        dp_mesh = mesh[DP_REPLICATE, EXPERT_DP_SHARD]
    else:
        dp_mesh = mesh[EXPERT_DP_SHARD]
    modules = expert_parallel_modules(model)
    for _name, module in modules:
        fully_shard(module, mesh=dp_mesh, **fully_shard_kwargs)
    return len(modules)
