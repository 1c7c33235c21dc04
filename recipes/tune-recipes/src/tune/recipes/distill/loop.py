"""The ``distill`` training loop: setup, train, save — one file that reads top to bottom.

A frozen teacher (eval mode, no gradients; FSDP-sharded like the student when distributed)
provides a target distribution at every labelled position; the student (full or adapters) is
trained on ``ce_weight * CE + (1 - ce_weight) * KL`` (tune.train's chunked KL). Resuming and the
outputs (HF / PEFT directories) are the sft recipe's shared steps.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tune.checkpoint import CheckpointManager
from tune.dist import StopSignalHandler
from tune.recipes.common.data_loading import (
    build_sample_builder,
    load_tokenizer,
    make_loader,
    per_rank_batches,
    split_source,
)
from tune.recipes.common.distill_setup import (
    DISTILL_RESUME_KEYS,
    compared_vocab_size,
    load_teacher,
)
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.metric_logging import build_loggers
from tune.recipes.common.model_loading import check_vocab_fits
from tune.recipes.common.optimization import build_optimizer, build_schedule
from tune.recipes.common.outputs import write_final_outputs
from tune.recipes.common.padding_free import (
    padding_free_batch,
    padding_free_batches,
    resolve_padding_free,
)
from tune.recipes.common.parallelism import (
    set_gradient_sync,
    setup_data_parallel,
    shard_with_fsdp,
    wrap_blocks,
)
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import DTYPES, seed_everything
from tune.recipes.common.train_state import (
    resume_run,
    save_training_state,
)
from tune.recipes.config import (
    ValidationContext,
    save_resolved_config,
    to_container,
    validate_config,
)
from tune.recipes.distill.config import DistillConfig
from tune.train import (
    GradientAccumulator,
    NonFiniteGuard,
    ThroughputMeter,
    clip_grad_norm,
    count_nonpadding_tokens,
)
from tune.train.steps.distillation import (
    DistillLossSettings,
    distill_micro_batch_loss,
    evaluate_distillation,
)

logger = logging.getLogger(__name__)


def run(config: DistillConfig) -> dict[str, Any]:
    """Distill ``config.teacher`` into ``config.model`` on ``config.data``; write HF / PEFT dirs.

    Args:
        config: a validated distill config.

    Returns:
        Summary values (final step, last training loss, last validation CE and KL, output paths).
    """
    return run_training(config, _train)


def _train(cfg: DistillConfig, rt: Any) -> dict[str, Any]:
    train_cfg, data_cfg, kd = cfg.training, cfg.data, cfg.distillation
    out_dir = Path(cfg.checkpointing.output_dir)
    resolved = to_container(cfg)
    seed_everything(train_cfg.seed)

    # ---- student (full or adapters) and frozen teacher ----------------------------------------
    base_dir = Path(cfg.model.checkpoint_dir)
    ckpt, lora = load_for_method(
        base_dir, train_cfg.method, train_cfg.lora, dtype=rt.dtype, device=rt.device
    )
    model = ckpt.model
    adapters = lora is not None
    teacher = load_teacher(
        cfg.teacher.checkpoint_dir, dtype=DTYPES[cfg.teacher.dtype], device=rt.device
    ).model
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    check_vocab_fits(
        tokenizer.vocab_size, ckpt.config.vocab_size, tokenizer_dir=cfg.tokenizer_dir,
        checkpoint_dir=base_dir,
    )  # fmt: skip
    settings = DistillLossSettings(
        kind=kd.kind,
        temperature=kd.temperature,
        symmetric_mix=kd.symmetric_mix,
        ce_weight=kd.ce_weight,
        chunk_size=kd.chunk_size,
        vocab_size=compared_vocab_size(
            model, teacher, tokenizer.vocab_size, teacher_dir=cfg.teacher.checkpoint_dir
        ),
    )

    # ---- parallelism: activation checkpointing, then FSDP for both models ---------------------
    dp = setup_data_parallel(rt)
    distributed, dp_rank, dp_size, reduce = dp.distributed, dp.rank, dp.size, dp.reduce
    wrap_blocks(
        [model, teacher], activation_checkpointing=train_cfg.activation_checkpointing,
        compile=train_cfg.compile,
    )  # fmt: skip
    # The teacher is sharded too: it never sits whole on a rank.
    shard_with_fsdp([model, teacher], dp, cfg.distributed)
    if distributed and cfg.distributed.fsdp:
        local = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in teacher.parameters())
        logger.info(
            "teacher sharded over %d ranks: %d of %d parameters on this rank",
            dp_size,
            local,
            sum(p.numel() for p in teacher.parameters()),
        )

    # ---- data ----------------------------------------------------------------------------------
    builder = build_sample_builder(
        tokenizer,
        data_cfg.format,
        column_map=data_cfg.column_map,
        chat_template=cfg.tokenizer.chat_template,
        train_on_input=data_cfg.train_on_input,
    )
    train_ds, val_ds = split_source(
        data_cfg.source,
        data_cfg.split,
        data_cfg.validation_split,
        data_cfg.validation_fraction,
        data_cfg.seed,
        validate=builder.validate,
    )
    accum = train_cfg.gradient_accumulation_steps(dp_size)
    total_steps = train_cfg.max_steps or train_cfg.epochs * (
        len(train_ds) // train_cfg.global_batch_size
    )
    validate_config(cfg, ValidationContext(world_size=dp_size, total_steps=total_steps))
    loader_args: dict[str, Any] = {
        "batch_size": train_cfg.micro_batch_size,
        "max_seq_len": data_cfg.max_seq_len,
        "packing": data_cfg.packing,
        "truncation": data_cfg.truncation,
        "seed": data_cfg.seed,
        "rank": dp_rank,
        "world_size": dp_size,
    }
    train_loader = make_loader(
        train_ds, builder, shuffle=data_cfg.shuffle, endless=True, **loader_args
    )

    def val_loader() -> Any:
        return make_loader(val_ds, builder, shuffle=False, endless=False, **loader_args)

    # ---- optimization --------------------------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt_cfg, sched_cfg = train_cfg.optimizer, train_cfg.lr_schedule
    optimizer = build_optimizer(
        trainable, opt_cfg.name, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay,
        betas=opt_cfg.betas, eps=opt_cfg.eps, kwargs=opt_cfg.kwargs,
        implementation=opt_cfg.implementation,
        allow_imports=cfg.allow_imports,
    )  # fmt: skip
    scheduler = build_schedule(
        optimizer, sched_cfg.name, warmup_steps=sched_cfg.warmup_steps, total_steps=total_steps,
        min_lr_ratio=sched_cfg.min_lr_ratio, allow_imports=cfg.allow_imports,
    )  # fmt: skip
    accumulator = GradientAccumulator(
        reduce, grad_average_world_size=dp_size if distributed else 1, device=rt.device
    )
    guard = NonFiniteGuard("halt" if train_cfg.nonfinite == "raise" else "skip")

    # ---- resume --------------------------------------------------------------------------------
    manager = CheckpointManager(out_dir / "checkpoints", keep_last_n=cfg.checkpointing.keep_last_n)
    step, extra = resume_run(
        manager, cfg.checkpointing.resume, resolved,
        sources={"data.source": cfg.data.source, "tokenizer.path": cfg.tokenizer_dir},
        model=model, optimizer=optimizer, scheduler=scheduler, guard=guard, loader=train_loader,
        trainable_only=adapters, distributed=distributed, extra={"tokens_seen": 0},
        extra_keys=DISTILL_RESUME_KEYS,
    )  # fmt: skip

    # ---- outputs and meters --------------------------------------------------------------------
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, out_dir / "config.yaml")
        metrics_log = build_loggers(
            cfg.logging.loggers,
            output_dir=out_dir,
            jsonl_path=cfg.logging.jsonl_path,
            options=cfg.logging.options,
            allow_imports=cfg.allow_imports,
            start_step=step,
        )
    padding_free = resolve_padding_free(
        cfg.data.padding_free, device=rt.device, packing=cfg.data.packing,
        compile=train_cfg.compile, tp_size=1,
    )  # fmt: skip
    meter = ThroughputMeter(device=rt.device)
    stopper = StopSignalHandler().install()
    model.train()

    def run_eval(at_step: int) -> dict[str, float] | None:
        if val_ds is None:
            return None
        values = evaluate_distillation(
            model, teacher, padding_free_batches(val_loader(), padding_free), settings,
            max_batches=per_rank_batches(cfg.eval.max_batches, dp_size),
            reduce=reduce,
        )  # fmt: skip
        if rt.is_main:
            metrics_log.log({**values, "val_ppl": math.exp(min(values["val_loss"], 50))}, at_step)
        return values

    def save_state(at_step: int) -> Path:
        extra["guard"] = guard.state_dict()
        return save_training_state(
            manager, at_step, model=model, optimizer=optimizer, scheduler=scheduler,
            data_state=train_loader.state_dict(), extra=extra, config=resolved,
            trainable_only=adapters, distributed=distributed,
        )  # fmt: skip

    last_val = run_eval(step) if cfg.eval.before_training and step == 0 else None
    last_loss = float("nan")
    batches = iter(train_loader)
    bar = tqdm(total=total_steps, initial=step, disable=not (rt.is_main and cfg.logging.progress_bar),
               desc="distill", unit="step", dynamic_ncols=True)  # fmt: skip

    # ---- train ---------------------------------------------------------------------------------
    while step < total_steps:
        meter.start()
        micro_batches = [
            padding_free_batch({k: v.to(rt.device) for k, v in next(batches).items()}, padding_free)
            for _ in range(accum)
        ]
        num_tokens = accumulator.start_step([(mb["labels"] != -100).sum() for mb in micro_batches])
        real_tokens = sum(
            count_nonpadding_tokens(mb["tokens"], mb.get("attention_mask")) for mb in micro_batches
        )
        parts = torch.zeros(2, dtype=torch.float64, device=rt.device)  # summed CE, KL
        for i, mb in enumerate(micro_batches):
            if distributed:
                set_gradient_sync(model, i == len(micro_batches) - 1)
            loss = distill_micro_batch_loss(model, teacher, mb, settings)
            accumulator.scale(loss.total).backward()
            parts += torch.stack([loss.ce_sum, loss.kl_sum]).double()
        step_metrics = accumulator.finish_step()
        if reduce is not None:
            parts = reduce(parts)
        ce_mean, kl_mean = (parts / num_tokens.clamp(min=1)).tolist()
        grad_norm = clip_grad_norm(trainable, train_cfg.max_grad_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        lr = optimizer.param_groups[0]["lr"]
        guard.step(optimizer, step=step + 1, loss=step_metrics["loss"], grad_norm=grad_norm,
                   scheduler=scheduler)  # fmt: skip
        step += 1
        extra["tokens_seen"] = extra.get("tokens_seen", 0) + real_tokens
        last_loss = step_metrics["loss"]
        perf = meter.stop(real_tokens)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", kl=f"{kl_mean:.4f}")
        if rt.is_main and (step % cfg.logging.log_every_n_steps == 0 or step == total_steps):
            metrics_log.log(
                {"loss": last_loss, "ce": ce_mean, "kl": kl_mean, "lr": lr,
                 "grad_norm": float(grad_norm), "num_tokens": step_metrics["num_tokens"],
                 **perf, **guard.metrics()},
                step,
            )  # fmt: skip
        if cfg.eval.every_n_steps and step % cfg.eval.every_n_steps == 0:
            last_val = run_eval(step)
        every = cfg.checkpointing.save_every_n_steps
        stop = stopper.should_stop()  # a collective: exactly once per step on every rank
        if (every and step % every == 0 and step < total_steps) or stop:
            save_state(step)
            if stop:
                logger.warning("stop signal received: saved step %d, exiting", step)
                bar.close()
                stopper.uninstall()
                return {"step": step, "loss": last_loss, "val": last_val, "stopped": True}
    bar.close()
    stopper.uninstall()
    guard.check_trained()  # every step skipped as non-finite: fail, write nothing

    # ---- final evaluation and outputs ----------------------------------------------------------
    if val_ds is not None and (cfg.eval.every_n_steps is None or step % cfg.eval.every_n_steps):
        last_val = run_eval(step)
    save_state(step)
    summary: dict[str, Any] = {"step": step, "loss": last_loss, "val": last_val}
    summary.update(
        write_final_outputs(
            out_dir, model, ckpt, base_dir, method=train_cfg.method, lora=lora, dtype=rt.dtype,
            save_adapter=cfg.checkpointing.save_adapter,
            save_merged=cfg.checkpointing.save_merged, is_main=rt.is_main,
            distributed=distributed,
        )
    )  # fmt: skip
    if rt.is_main:
        metrics_log.close()
    return summary
