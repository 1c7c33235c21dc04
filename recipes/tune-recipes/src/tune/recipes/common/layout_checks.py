"""Checks of ``distributed.pp_size`` (pipeline parallel) and ``distributed.cp_size`` (context
parallel): degrees that divide the world, recipes and models that run them, and the data-parallel
size the batch is split over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.config import Checks

# Recipes whose loops run pipeline stages / zig-zag sequence shards.
PIPELINE_RECIPES = ("sft", "preference")
REFERENCE_LOSSES = ("dpo", "ipo", "kto")
CONTEXT_PARALLEL_RECIPES = ("sft",)
PIPELINE_SCHEDULES = (
    "gpipe", "1f1b", "interleaved_1f1b", "looped_bfs", "zero_bubble", "zbv_zero_bubble",
)  # fmt: skip
SINGLE_STAGE_SCHEDULES = ("gpipe", "1f1b")


def recipe_runs_layout(recipe: str, *, tp: int, pp: int, cp: int, ep: int) -> bool:
    """Whether ``recipe``'s loop runs this combination of degrees (``tune plan`` candidates)."""
    if pp > 1 and (recipe not in PIPELINE_RECIPES or tp > 1 or ep > 1):
        return False
    return not (cp > 1 and (recipe not in CONTEXT_PARALLEL_RECIPES or max(tp, pp, ep) > 1))


def data_shards(dist: Any, world: int) -> int:
    """Ranks reading distinct batches: world / (tp * pp * cp) (1 when that does not divide)."""
    split = max(dist.tp_size, 1) * max(dist.pp_size, 1) * max(dist.cp_size, 1)
    return world // split if split and world % split == 0 else 1


def pipeline_virtual_stages(dist: Any) -> int:
    """Stages per rank: ``pp_virtual_stages``, else 1 for gpipe / 1f1b and 2 otherwise."""
    if dist.pp_virtual_stages is not None:
        return int(dist.pp_virtual_stages)
    return 1 if dist.pp_schedule in SINGLE_STAGE_SCHEDULES else 2


def check_layout(cfg: Any, c: Checks) -> None:
    """The product of the degrees divides the world; pp and cp in recipes and setups that run
    them."""
    dist, world = cfg.distributed, c.context.world_size
    recipe = getattr(cfg, "recipe", "")
    pp_ok = c.positive("distributed.pp_size", dist.pp_size)
    cp_ok = c.positive("distributed.cp_size", dist.cp_size)
    if not (pp_ok and cp_ok) or dist.tp_size < 1:
        return
    split = dist.tp_size * dist.pp_size * dist.cp_size
    if world > 1 and world % split:
        c.error("distributed", f"tp_size {dist.tp_size} × pp_size {dist.pp_size} × cp_size "
                               f"{dist.cp_size} = {split} does not divide the world size {world}")  # fmt: skip
    if dist.pp_size > 1:
        _check_pipeline(cfg, c, recipe)
    if dist.cp_size > 1:
        _check_context(cfg, c, recipe)
    if world == 1 and (dist.pp_size > 1 or dist.cp_size > 1):
        c.warn("distributed", "pp_size / cp_size have no effect with one process")


def _check_pipeline(cfg: Any, c: Checks, recipe: str) -> None:
    dist, t, key = cfg.distributed, cfg.training, "distributed.pp_size"
    if recipe not in PIPELINE_RECIPES:
        c.error(key, f"pipeline parallelism runs in {list(PIPELINE_RECIPES)}, not in {recipe!r}: "
                     "use pp_size=1")  # fmt: skip
        return
    if dist.pp_schedule not in PIPELINE_SCHEDULES:
        c.error("distributed.pp_schedule",
                f"unknown {dist.pp_schedule!r}; expected one of {list(PIPELINE_SCHEDULES)}")  # fmt: skip
        return
    virtual = pipeline_virtual_stages(dist)
    if dist.pp_schedule in SINGLE_STAGE_SCHEDULES and virtual != 1:
        c.error("distributed.pp_virtual_stages",
                f"{dist.pp_schedule} runs one stage per rank, got {virtual}")  # fmt: skip
    if dist.pp_schedule == "zbv_zero_bubble" and virtual != 2:
        c.error("distributed.pp_virtual_stages", f"zbv_zero_bubble runs 2 stages per rank, got "
                                                 f"{virtual}")  # fmt: skip
    layers = _num_layers(cfg.model.checkpoint_dir)
    if layers is not None and dist.pp_size * virtual > layers:
        c.error(key, f"{dist.pp_size} ranks × {virtual} stages each = {dist.pp_size * virtual} "
                     f"pipeline stages, but {cfg.model.checkpoint_dir} has {layers} layers")  # fmt: skip
    micro = dist.pp_microbatches or dist.pp_size
    if c.positive("distributed.pp_microbatches", micro) and t.micro_batch_size % micro:
        c.error("distributed.pp_microbatches",
                f"{micro} does not divide training.micro_batch_size {t.micro_batch_size}: the "
                "pipeline splits each rank's micro-batch into this many pieces")  # fmt: skip
    if getattr(cfg.data, "padding_free", False):
        c.error(key, "pipeline stages pass fixed-shape activations: use data.padding_free=false "
                     "(rows padded to data.max_seq_len) or data.packing=true")  # fmt: skip
    if getattr(cfg.model, "implementation", "native") == "transformers":
        c.error(key, "pipeline stages are cut from a native model; model.implementation="
                     "transformers cannot be")  # fmt: skip
    if dist.ep_size > 1 or dist.tp_size > 1:
        c.error(key, "cannot be combined with distributed.ep_size or tp_size > 1 in the recipes "
                     "yet (tune.dist composes PP with TP; the recipe wiring does not)")  # fmt: skip
    if t.method == "qlora":
        c.error("training.method", "qlora cannot be combined with distributed.pp_size > 1 yet")
    loss = getattr(getattr(t, "loss", None), "name", None)
    if loss == "kto":
        c.error("training.loss.name", "kto (unpaired rows) cannot be combined with "
                                      "distributed.pp_size > 1 yet")  # fmt: skip
    elif loss in REFERENCE_LOSSES and t.method == "full":
        c.error("training.loss.name", f"{loss} with training.method=full needs a frozen reference "
                "model, which is not pipelined yet: use an adapter method (the reference is the "
                "policy with its adapters disabled) or a reference-free loss (simpo, orpo, "
                "reference_free_dpo)")  # fmt: skip
    if getattr(getattr(cfg, "qat", None), "scheme", None) is not None:
        c.error("qat.scheme", "quantization-aware training cannot be combined with "
                              "distributed.pp_size > 1 yet")  # fmt: skip
    if getattr(t, "compile", False) or getattr(t, "activation_offloading", False):
        c.error(key, "cannot be combined with training.compile or training.activation_offloading "
                     "yet")  # fmt: skip


def _num_layers(checkpoint_dir: str) -> int | None:
    """``num_hidden_layers`` of a local checkpoint's config.json (None when not readable here)."""
    try:
        config = json.loads((Path(checkpoint_dir).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    return layers if isinstance(layers, int) else None


def _check_context(cfg: Any, c: Checks, recipe: str) -> None:
    dist, key = cfg.distributed, "distributed.cp_size"
    if recipe not in CONTEXT_PARALLEL_RECIPES:
        c.error(key, f"context parallelism runs in {list(CONTEXT_PARALLEL_RECIPES)}, not in "
                     f"{recipe!r}: use cp_size=1")  # fmt: skip
        return
    if dist.tp_size > 1 or dist.pp_size > 1 or dist.ep_size > 1:
        c.error(key, "cannot be combined with tp_size, pp_size or ep_size > 1 yet")
    if getattr(cfg.model, "implementation", "native") == "transformers":
        c.error(key, "ring attention replaces the attention of a native model; "
                     "model.implementation=transformers cannot use it")  # fmt: skip


def reject_routed_experts(model: Any, has_experts: bool, key: str) -> None:
    """Refuse a mixture-of-experts model under CP or PP (router losses and expert-load metrics
    read every layer's routing of whole batches)."""
    if has_experts:
        raise ValueError(
            f"distributed.{key} > 1: mixture-of-experts models cannot use it yet "
            f"({type(model).__name__} has routed experts); use {key}=1 (ep_size splits experts)"
        )
