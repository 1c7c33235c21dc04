"""``tune plan <config>``: per-rank peak memory of a training config and a layout that fits.

The model is built on the meta device (no memory) from the config's checkpoint ``config.json``
or a named size (``--model llama3.1-8b``), prepared for ``training.method`` (LoRA/DoRA adapters,
NF4 bytes for QLoRA), and its sizes go to ``tune.dist.estimate_memory``.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from tune.config import declared_recipe
from tune.recipes.common.layout_checks import recipe_runs_layout
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config, load_recipe

_UNITS = {"": 2**30, "gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40}
# torchao NF4 per element: 4-bit code, an int8 scale per 64, a float32 factor per 64 * 256.
NF4_BYTES_PER_ELEMENT = 0.5 + 1 / 64 + 4 / (64 * 256)
# The block Linears whose saved inputs count (tune.dist's ``SAVED_IF_TRAINED`` keys).
_INPUT_SAVERS = {"qkv": "attn.q_proj", "gate_up": "mlp.gate_proj", "down": "mlp.down_proj"}
_BLOCK = re.compile(r"(^|\.)layers\.\d+\.")
_EXPERTS = re.compile(r"(^|\.)layers\.\d+\.mlp\.experts\.")
# Candidate rows shown around the first layout that fits (--all: every one).
_SHOWN_BEFORE, _SHOWN_AFTER = 6, 4


def parse_bytes(text: str) -> int:
    """``"80GiB"``, ``"80GB"``, ``"512MiB"`` or ``"80"`` (GiB) as bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"--gpu-memory: expected e.g. 80GiB, 80GB or 512MiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune plan``."""
    p = sub.add_parser(
        "plan",
        help="estimate per-rank peak memory and recommend a parallel layout",
        description="Peak device memory per rank of a training config (parameters, gradients, "
        "optimizer state, activations, loss, FSDP/pipeline/context/expert buffers), and the "
        "first of the candidate layouts (FSDP over the data-parallel ranks, TP, PP and CP "
        "1/2/4/8, activation checkpointing, CPU offload) that fits --gpu-memory with --margin "
        "kept free.",
    )
    p.add_argument("config", help="bundled config name or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    p.add_argument("--recipe", help="the recipe (default: the config's `recipe:` key)")
    p.add_argument("--model", help="a tune.models named size instead of the checkpoint's config")
    p.add_argument("--world-size", type=int, default=1, help="ranks of the run (default 1)")
    p.add_argument("--gpu-memory", default="80GiB", help="memory of one device (default 80GiB)")
    p.add_argument("--margin", type=float, default=0.1, help="fraction kept free (default 0.1)")
    p.add_argument("--all", action="store_true", help="list every candidate layout")
    p.set_defaults(func=main)


def model_plan_inputs(model: Any, config: Any, method: str, lora: Any) -> tuple[Any, Any]:
    """``(ModelShape, ParameterCounts)`` of a meta-device model prepared for ``method``.

    Args:
        model: the native model on the meta device (its parameters are replaced in place).
        config: its tune.models config (sizes).
        method: ``full``, ``lora``, ``qlora`` or ``dora``.
        lora: the ``training.lora`` section (ignored for ``full``).
    """
    from torch import nn

    from tune.dist import ModelShape, ParameterCounts
    from tune.peft import apply_lora
    from tune.recipes.common.lora_settings import HEAD_NAMES, lora_config_from

    quantized: set[int] = set()
    adapted: list[str] = []
    if method == "full":
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        if method == "qlora":  # the Linear weights to_nf4_linear_weights converts
            quantized = {id(m.weight) for name, m in model.named_modules()
                         if isinstance(m, nn.Linear) and name.split(".")[-1] not in HEAD_NAMES}  # fmt: skip
        settings = lora_config_from(method, lora)
        adapted = apply_lora(model, settings)
    trainable = frozen = root = experts = experts_trainable = 0
    nf4_elements = largest = 0
    for name, p in model.named_parameters():
        if id(p) in quantized:
            nf4_elements += p.numel()
            largest = max(largest, p.numel())
            continue
        trainable += p.numel() if p.requires_grad else 0
        frozen += 0 if p.requires_grad else p.numel()
        root += 0 if _BLOCK.search(name) else p.numel()
        if _EXPERTS.search(name):
            experts += p.numel()
            experts_trainable += p.numel() if p.requires_grad else 0
    num_experts = getattr(config, "num_experts", 0) or 0  # tune.models' MoEDecoderConfig
    shape = ModelShape(
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_layers=config.num_layers, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim, vocab_size=config.vocab_size,
        num_experts=num_experts, experts_per_token=config.top_k if num_experts else 0,
        moe_intermediate_size=config.moe_intermediate_size if num_experts else 0,
        shared_expert_intermediate_size=getattr(config, "shared_expert_intermediate_size", 0)
        or 0,
    )  # fmt: skip
    head = model.get_submodule("output").weight
    block = model.get_submodule("layers.0")
    modules = dict(block.named_modules())
    trains = {  # a Linear saves its input when its weight is trained or adapted
        key: any(p.requires_grad for p in modules[path].parameters())
        for key, path in _INPUT_SAVERS.items() if path in modules
    }  # fmt: skip
    adapter_saved = sum(
        lora.r + (2 * block.get_submodule(n.split("layers.0.", 1)[1]).out_features
                  if method == "dora" else 0)
        for n in adapted if n.startswith("layers.0.")
    )  # fmt: skip
    counts = ParameterCounts(
        trainable=trainable, frozen=frozen, root=root, head_trainable=head.requires_grad,
        quantized_bytes=int(nf4_elements * NF4_BYTES_PER_ELEMENT), largest_quantized=largest,
        trained_inputs=frozenset(k for k, v in trains.items() if v)
        | (_INPUT_SAVERS.keys() - trains.keys() if method == "full" else set()),  # MoE blocks
        adapter_saved_per_token=adapter_saved, experts=experts,
        experts_trainable=experts_trainable,
    )  # fmt: skip
    return shape, counts


def _gib(n: int) -> str:
    return f"{n / 2**30:8.2f} GiB"


def main(args: argparse.Namespace) -> int:
    """Print the estimate at the config's layout, then the candidate layouts for the machine."""
    from tune.dist import TrainingLayout, estimate_memory, recommend_layout
    from tune.models import build_named_size, model_from_checkpoint_dir

    path, bundled_recipe = find_config(args.config, args.recipe)
    recipe_name = args.recipe or bundled_recipe or declared_recipe(path)
    if recipe_name is None:
        raise LookupError(f"{path}: add `recipe: <name>` or pass --recipe")
    cfg = load_config(path, load_recipe(recipe_name).config_class, args.overrides,
                      recipe=recipe_name, validate=False, import_gguf=False)  # fmt: skip
    t, world = cfg.training, args.world_size
    model: Any
    if args.model:
        model = build_named_size(args.model)
    else:
        model = model_from_checkpoint_dir(cfg.model.checkpoint_dir, device="meta").model
    shape, counts = model_plan_inputs(model, model.config, t.method, t.lora)
    dist = cfg.distributed
    pp, cp, ep = dist.pp_size, dist.cp_size, dist.ep_size
    dp = max(world // (dist.tp_size * pp), 1)  # CP and EP groups are carved from these ranks
    microbatches = dist.pp_microbatches or pp
    if pp > 1 and t.micro_batch_size % microbatches:
        raise ValueError(f"distributed.pp_microbatches: {microbatches} (null: pp_size) must divide "
                         f"training.micro_batch_size={t.micro_batch_size}")  # fmt: skip
    layout = TrainingLayout(
        seq_len=cfg.data.max_seq_len, micro_batch_size=t.micro_batch_size,
        dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
        optimizer=t.optimizer.name if t.optimizer.name in ("adamw", "adam", "adamw8bit", "sgd")
        else "adamw",
        gradient_accumulation=max(t.gradient_accumulation_steps(dp), 1),
        fsdp_size=dp if dist.fsdp else 1, tp_size=dist.tp_size,
        activation_checkpointing=t.activation_checkpointing,
        activation_offloading=getattr(t, "activation_offloading", False),
        fused_ce=getattr(t, "fused_ce", False) and world == 1,  # the recipes fuse on one rank
        cpu_offload=dist.cpu_offload, pp_size=pp, pp_schedule=dist.pp_schedule,
        pp_microbatches=microbatches, cp_size=cp, ep_size=ep,
    )  # fmt: skip
    device_bytes = parse_bytes(args.gpu_memory)
    est = estimate_memory(shape, counts, layout)
    moe = (
        f", {shape.num_experts} experts (top {shape.experts_per_token})"
        if shape.num_experts
        else ""
    )
    print(f"{path}: {recipe_name}, {t.method}, {counts.trainable:,} trainable of "
          f"{counts.total:,} float parameters{moe}, seq {layout.seq_len} x micro-batch "
          f"{layout.micro_batch_size}, world size {world} (tp {dist.tp_size}, pp {pp}, cp {cp}, "
          f"ep {ep})")  # fmt: skip
    stage = f", {est.stage} pipeline stage" if est.stage != "all" else ""
    print(f"{'per rank (config layout)':<28}{'':>12}")
    for part, n in est.rows():
        print(f"  {part:<26}{_gib(n)}")
    print(f"  {'(on the host)':<26}{_gib(est.host)}    peak at the {est.phase}{stage}")
    budget = device_bytes * (1 - args.margin)
    print(f"\ncandidate layouts on {world} rank(s) of {_gib(device_bytes).strip()} "
          f"({args.margin:.0%} kept free):")  # fmt: skip
    print(f"  {'fsdp':>4} {'tp':>3} {'pp':>3} {'cp':>3} {'ep':>3} {'act. ckpt':>9} {'cpu off':>7} "
          f"{'peak/rank':>13}  fits")  # fmt: skip
    choices = recommend_layout(shape, counts, layout, world_size=world,
                               device_bytes=device_bytes, margin=args.margin)  # fmt: skip
    runnable = [c for c in choices if recipe_runs_layout(
        recipe_name, tp=c.layout.tp_size, pp=c.layout.pp_size, cp=c.layout.cp_size,
        ep=c.layout.ep_size)]  # fmt: skip
    if len(runnable) < len(choices):
        print(f"  ({len(choices) - len(runnable)} layouts the {recipe_name} recipe cannot run yet "
              "are left out: PP or CP with TP or EP, CP with PP)")  # fmt: skip
    choices = runnable
    best_at = next((i for i, c in enumerate(choices) if c.fits), None)
    shown = range(len(choices)) if args.all else _shown(choices, best_at)
    if shown and shown[0] > 0:
        print(f"  ... {shown[0]} earlier candidates that do not fit (--all lists every one)")
    for i in shown:
        c, lay = choices[i], choices[i].layout
        print(f"  {lay.fsdp_size:>4} {lay.tp_size:>3} {lay.pp_size:>3} {lay.cp_size:>3} "
              f"{lay.ep_size:>3} {lay.activation_checkpointing!s:>9} {lay.cpu_offload!s:>7} "
              f"{_gib(c.estimate.total)}  {'yes' if c.fits else 'no'}")  # fmt: skip
    if len(shown) < len(choices) and shown and shown[-1] < len(choices) - 1:
        print(f"  ... {len(choices) - len(shown) - shown[0]} more (--all lists every one)")
    if best_at is None:
        print(f"\nno candidate fits {_gib(int(budget)).strip()} per rank: more ranks, a shorter "
              "sequence, a smaller micro-batch or an adapter method")  # fmt: skip
        return 1
    best = choices[best_at]
    lay = best.layout
    print(f"\nrecommended: distributed.tp_size={lay.tp_size} distributed.pp_size={lay.pp_size} "
          f"distributed.cp_size={lay.cp_size} "
          f"{f'distributed.pp_microbatches={lay.pp_microbatches} ' if lay.pp_size > 1 else ''}"
          f"distributed.fsdp={lay.fsdp_size > 1} "
          f"distributed.cpu_offload={lay.cpu_offload} "
          f"training.activation_checkpointing={lay.activation_checkpointing} "
          f"({_gib(best.estimate.total).strip()} per rank)")  # fmt: skip
    return 0


def _shown(choices: list[Any], best_at: int | None) -> list[int]:
    """Rows listed without --all: the last few that do not fit before the first that does,
    it, and the next few that fit (the last few rows when none fits)."""
    if best_at is None:
        return list(range(max(len(choices) - _SHOWN_BEFORE, 0), len(choices)))
    after = [i for i in range(best_at + 1, len(choices)) if choices[i].fits][:_SHOWN_AFTER]
    return [*range(max(best_at - _SHOWN_BEFORE, 0), best_at + 1), *after]
