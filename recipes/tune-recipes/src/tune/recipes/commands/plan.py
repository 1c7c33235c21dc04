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
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config, load_recipe

_UNITS = {"": 2**30, "gib": 2**30, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40}
# torchao NF4 per element: 4-bit code, an int8 scale per 64, a float32 factor per 64 * 256.
NF4_BYTES_PER_ELEMENT = 0.5 + 1 / 64 + 4 / (64 * 256)
# The block Linears whose saved inputs count (tune.dist's ``SAVED_IF_TRAINED`` keys).
_INPUT_SAVERS = {"qkv": "attn.q_proj", "gate_up": "mlp.gate_proj", "down": "mlp.down_proj"}
_BLOCK = re.compile(r"(^|\.)layers\.\d+\.")


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
        "optimizer state, activations, loss, FSDP buffers), and the first of the candidate "
        "layouts (FSDP over all ranks, TP 1/2/4/8, activation checkpointing, CPU offload) that "
        "fits --gpu-memory with --margin kept free.",
    )
    p.add_argument("config", help="bundled config name or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    p.add_argument("--recipe", help="the recipe (default: the config's `recipe:` key)")
    p.add_argument("--model", help="a tune.models named size instead of the checkpoint's config")
    p.add_argument("--world-size", type=int, default=1, help="ranks of the run (default 1)")
    p.add_argument("--gpu-memory", default="80GiB", help="memory of one device (default 80GiB)")
    p.add_argument("--margin", type=float, default=0.1, help="fraction kept free (default 0.1)")
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
    trainable = frozen = root = 0
    nf4_elements = largest = 0
    for name, p in model.named_parameters():
        if id(p) in quantized:
            nf4_elements += p.numel()
            largest = max(largest, p.numel())
            continue
        trainable += p.numel() if p.requires_grad else 0
        frozen += 0 if p.requires_grad else p.numel()
        root += 0 if _BLOCK.search(name) else p.numel()
    moe_width = getattr(config, "moe_intermediate_size", None)
    top_k = getattr(config, "num_experts_per_tok", None) or getattr(config, "top_k", None)
    shape = ModelShape(
        hidden_size=config.hidden_size,
        intermediate_size=moe_width * top_k if moe_width and top_k else config.intermediate_size,
        num_layers=config.num_layers, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim, vocab_size=config.vocab_size,
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
        adapter_saved_per_token=adapter_saved,
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
    layout = TrainingLayout(
        seq_len=cfg.data.max_seq_len, micro_batch_size=t.micro_batch_size,
        dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
        optimizer=t.optimizer.name if t.optimizer.name in ("adamw", "adam", "adamw8bit", "sgd")
        else "adamw",
        gradient_accumulation=max(t.gradient_accumulation_steps(world // dist.tp_size), 1),
        fsdp_size=world // dist.tp_size if dist.fsdp else 1, tp_size=dist.tp_size,
        activation_checkpointing=t.activation_checkpointing,
        activation_offloading=getattr(t, "activation_offloading", False),
        fused_ce=getattr(t, "fused_ce", False) and world == 1,  # the recipes fuse on one rank
        cpu_offload=dist.cpu_offload,
    )  # fmt: skip
    device_bytes = parse_bytes(args.gpu_memory)
    est = estimate_memory(shape, counts, layout)
    print(f"{path}: {recipe_name}, {t.method}, {counts.trainable:,} trainable of "
          f"{counts.total:,} float parameters, seq {layout.seq_len} x micro-batch "
          f"{layout.micro_batch_size}, world size {world}")  # fmt: skip
    print(f"{'per rank (config layout)':<28}{'':>12}")
    for part, n in est.rows():
        print(f"  {part:<26}{_gib(n)}")
    print(f"  {'(on the host)':<26}{_gib(est.host)}    peak at the {est.phase}")
    budget = device_bytes * (1 - args.margin)
    print(f"\ncandidate layouts on {world} rank(s) of {_gib(device_bytes).strip()} "
          f"({args.margin:.0%} kept free):")  # fmt: skip
    print(f"  {'fsdp':>4} {'tp':>3} {'act. ckpt':>9} {'cpu off':>7} {'peak/rank':>13}  fits")
    choices = recommend_layout(shape, counts, layout, world_size=world,
                               device_bytes=device_bytes, margin=args.margin)  # fmt: skip
    for c in choices:
        lay = c.layout
        print(f"  {lay.fsdp_size:>4} {lay.tp_size:>3} {lay.activation_checkpointing!s:>9} "
              f"{lay.cpu_offload!s:>7} {_gib(c.estimate.total)}  {'yes' if c.fits else 'no'}")  # fmt: skip
    best = next((c for c in choices if c.fits), None)
    if best is None:
        print(f"\nno candidate fits {_gib(int(budget)).strip()} per rank: more ranks, a shorter "
              "sequence, a smaller micro-batch or an adapter method")  # fmt: skip
        return 1
    lay = best.layout
    print(f"\nrecommended: distributed.tp_size={lay.tp_size} distributed.fsdp={lay.fsdp_size > 1} "
          f"distributed.cpu_offload={lay.cpu_offload} "
          f"training.activation_checkpointing={lay.activation_checkpointing} "
          f"({_gib(best.estimate.total).strip()} per rank)")  # fmt: skip
    return 0
