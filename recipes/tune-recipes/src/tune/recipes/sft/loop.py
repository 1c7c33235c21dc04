"""The ``sft`` training loop: setup, train, save — one file that reads top to bottom.

The same loop runs on one device and under torchrun (FSDP2, optionally tensor parallel). Each
step belongs to a library: the model (tune.models), adapters (tune.peft), NF4/QAT (tune.quant),
data (tune.data), sharding (tune.dist), loss/accumulation/guards/meters (tune.train) and
checkpoints (tune.checkpoint).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tune.checkpoint import CheckpointManager
from tune.dist import (
    StopSignalHandler,
    apply_tp,
)
from tune.models import tp_plan
from tune.quant import prepare_qat
from tune.recipes.common.data_loading import (
    build_sample_builder,
    load_tokenizer,
    make_loader,
    per_rank_batches,
    split_source,
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
from tune.recipes.common.qat_outputs import write_quantized_output
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import seed_everything
from tune.recipes.common.train_state import (
    resume_run,
    save_training_state,
)
from tune.recipes.config import (
    ValidationContext,
    redact,
    save_resolved_config,
    to_container,
    validate_config,
)
from tune.recipes.sft.config import SFTConfig
from tune.train import (
    GradientAccumulator,
    NonFiniteGuard,
    ThroughputMeter,
    clip_grad_norm,
    count_nonpadding_tokens,
)
from tune.train.steps.token import evaluate_token_loss as evaluate
from tune.train.steps.token import micro_batch_loss

logger = logging.getLogger(__name__)


def run(config: SFTConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data`` and write HF / PEFT directories.

    Args:
        config: a validated SFT config.

    Returns:
        Summary values (final step, last training loss, last validation loss, output paths).
    """
    return run_training(config, _train)


def _train(cfg: SFTConfig, rt: Any) -> dict[str, Any]:
    train_cfg, data_cfg = cfg.training, cfg.data
    out_dir = Path(cfg.checkpointing.output_dir)
    resolved = redact(to_container(cfg))  # saved with every checkpoint: no secrets
    seed_everything(train_cfg.seed)

    # ---- model, adapters, quantization-aware training -----------------------------------
    base_dir = Path(cfg.model.checkpoint_dir)
    ckpt, lora = load_for_method(
        base_dir, train_cfg.method, train_cfg.lora, dtype=rt.dtype, device=rt.device
    )
    model = ckpt.model
    adapters = lora is not None
    if cfg.qat.scheme is not None:  # after the adapters, which replace the linear layers
        prepare_qat(model, cfg.qat.scheme, exclude=list(cfg.qat.exclude))

    # ---- parallelism: TP, activation checkpointing, then FSDP (that order) --------------
    dp = setup_data_parallel(rt, tp_size=cfg.distributed.tp_size)
    distributed, dp_rank, dp_size, reduce = dp.distributed, dp.rank, dp.size, dp.reduce
    if distributed and cfg.distributed.tp_size > 1:
        apply_tp(model, dp.mesh["tp"], tp_plan(ckpt.config))
    wrap_blocks(
        [model], activation_checkpointing=train_cfg.activation_checkpointing,
        activation_offloading=train_cfg.activation_offloading, compile=train_cfg.compile,
    )  # fmt: skip
    shard_with_fsdp([model], dp, cfg.distributed)

    # ---- data ------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    check_vocab_fits(
        tokenizer.vocab_size, ckpt.config.vocab_size, tokenizer_dir=cfg.tokenizer_dir,
        checkpoint_dir=base_dir,
    )  # fmt: skip
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
        "max_seq_len": data_cfg.max_seq_len,
        "packing": data_cfg.packing,
        "truncation": data_cfg.truncation,
        "seed": data_cfg.seed,
        "rank": dp_rank,
        "world_size": dp_size,
    }
    train_loader = make_loader(
        train_ds,
        builder,
        batch_size=train_cfg.micro_batch_size,
        shuffle=data_cfg.shuffle,
        endless=True,
        **loader_args,
    )

    def val_loader() -> Any:
        return make_loader(
            val_ds,
            builder,
            batch_size=train_cfg.micro_batch_size,
            shuffle=False,
            endless=False,
            **loader_args,
        )

    # ---- optimization ---------------------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt_cfg, sched_cfg = train_cfg.optimizer, train_cfg.lr_schedule
    optimizer = build_optimizer(
        trainable,
        opt_cfg.name,
        lr=opt_cfg.lr,
        weight_decay=opt_cfg.weight_decay,
        betas=opt_cfg.betas,
        eps=opt_cfg.eps,
        kwargs=opt_cfg.kwargs,
        allow_imports=cfg.allow_imports,
        implementation=opt_cfg.implementation,
    )
    scheduler = build_schedule(
        optimizer,
        sched_cfg.name,
        warmup_steps=sched_cfg.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=sched_cfg.min_lr_ratio,
        allow_imports=cfg.allow_imports,
    )
    accumulator = GradientAccumulator(
        reduce, grad_average_world_size=dp_size if distributed else 1, device=rt.device
    )
    guard = NonFiniteGuard("halt" if train_cfg.nonfinite == "raise" else "skip")
    fused = train_cfg.fused_ce and not distributed  # a sharded output weight needs plain CE
    padding_free = resolve_padding_free(
        data_cfg.padding_free, device=rt.device, packing=data_cfg.packing,
        compile=train_cfg.compile, tp_size=cfg.distributed.tp_size,
    )  # fmt: skip
    softcap = getattr(ckpt.config, "final_logit_softcapping", None)

    # ---- resume ----------------------------------------------------------------------------
    manager = CheckpointManager(out_dir / "checkpoints", keep_last_n=cfg.checkpointing.keep_last_n)
    step, extra = resume_run(
        manager, cfg.checkpointing.resume, resolved,
        sources={"data.source": data_cfg.source, "tokenizer.path": cfg.tokenizer_dir},
        model=model, optimizer=optimizer, scheduler=scheduler, guard=guard, loader=train_loader,
        trainable_only=adapters, distributed=distributed, extra={"tokens_seen": 0},
    )  # fmt: skip

    # ---- outputs and meters ----------------------------------------------------------------
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
    meter = ThroughputMeter(device=rt.device)
    stopper = StopSignalHandler().install()
    model.train()

    def run_eval(at_step: int) -> float | None:
        if val_ds is None:
            return None
        val_loss = evaluate(
            model, padding_free_batches(val_loader(), padding_free), fused=fused, softcap=softcap,
            max_batches=per_rank_batches(cfg.eval.max_batches, dp_size),
            reduce=reduce,
        )  # fmt: skip
        if rt.is_main:
            metrics_log.log({"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}, at_step)
        return val_loss

    def save_state(at_step: int) -> Path:
        extra["guard"] = guard.state_dict()
        return save_training_state(
            manager,
            at_step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            data_state=train_loader.state_dict(),
            extra=extra,
            config=resolved,
            trainable_only=adapters,
            distributed=distributed,
        )

    last_val = run_eval(step) if cfg.eval.before_training and step == 0 else None
    last_loss = float("nan")
    batches = iter(train_loader)
    bar = tqdm(total=total_steps, initial=step, disable=not (rt.is_main and cfg.logging.progress_bar),
               desc="sft", unit="step", dynamic_ncols=True)  # fmt: skip

    # ---- train -----------------------------------------------------------------------------
    while step < total_steps:
        meter.start()
        micro_batches = [
            padding_free_batch({k: v.to(rt.device) for k, v in next(batches).items()}, padding_free)
            for _ in range(accum)
        ]
        accumulator.start_step([(mb["labels"] != -100).sum() for mb in micro_batches])
        real_tokens = sum(
            count_nonpadding_tokens(mb["tokens"], mb.get("attention_mask")) for mb in micro_batches
        )
        for i, mb in enumerate(micro_batches):
            if distributed:
                set_gradient_sync(model, i == len(micro_batches) - 1)
            loss = micro_batch_loss(model, mb, fused=fused, softcap=softcap)
            accumulator.scale(loss).backward()
        step_metrics = accumulator.finish_step()
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
        bar.set_postfix(loss=f"{last_loss:.4f}")
        if rt.is_main and (step % cfg.logging.log_every_n_steps == 0 or step == total_steps):
            metrics_log.log(
                {"loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                 "num_tokens": step_metrics["num_tokens"], **perf, **guard.metrics()},
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
                return {"step": step, "loss": last_loss, "val_loss": last_val, "stopped": True}
    bar.close()
    stopper.uninstall()
    guard.check_trained()  # every step skipped as non-finite: fail, write nothing

    # ---- final evaluation and outputs ------------------------------------------------------
    if val_ds is not None and (cfg.eval.every_n_steps is None or step % cfg.eval.every_n_steps):
        last_val = run_eval(step)
    save_state(step)
    summary: dict[str, Any] = {"step": step, "loss": last_loss, "val_loss": last_val}
    summary.update(
        write_final_outputs(
            out_dir,
            model,
            ckpt,
            base_dir,
            method=train_cfg.method,
            lora=lora,
            dtype=rt.dtype,
            save_adapter=cfg.checkpointing.save_adapter,
            save_merged=cfg.checkpointing.save_merged,
            is_main=rt.is_main,
            distributed=distributed,
        )
    )
    if cfg.qat.scheme is not None:  # last: converting replaces the float weights in place
        summary.update(
            write_quantized_output(
                out_dir,
                model,
                ckpt,
                base_dir,
                scheme=cfg.qat.scheme,
                exclude=cfg.qat.exclude,
                method=train_cfg.method,
                lora=lora,
                dtype=rt.dtype,
                is_main=rt.is_main,
                distributed=distributed,
            )
        )
    if rt.is_main:
        metrics_log.close()
    return summary
