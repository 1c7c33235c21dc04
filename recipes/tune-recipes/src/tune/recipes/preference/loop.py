"""The ``preference`` training loop (DPO, IPO, SimPO, ORPO, KTO, reference-free DPO).

Setup, train, save — read top to bottom. The reference model is the policy with its adapters
disabled for LoRA/QLoRA/DoRA (no copy, no extra memory), or a frozen second model for full
tuning (one more set of weights in the model dtype, no gradients or optimizer state; sharded
like the policy under FSDP). Chosen and rejected responses go through one forward.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from tune.checkpoint import CheckpointManager
from tune.data import PreferenceBuilder, StreamingLoader
from tune.dist import StopSignalHandler
from tune.recipes.common.data_loading import load_tokenizer, per_rank_batches, split_source
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.metric_logging import build_loggers
from tune.recipes.common.model_loading import check_vocab_fits, load_pretrained
from tune.recipes.common.optimization import build_optimizer, build_schedule
from tune.recipes.common.outputs import write_final_outputs
from tune.recipes.common.parallelism import setup_data_parallel, shard_with_fsdp, wrap_blocks
from tune.recipes.common.preference_reference import reference_logprobs_fn
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import seed_everything
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
from tune.recipes.preference.config import PreferenceConfig
from tune.recipes.preference.unpaired import UnpairedBuilder, UnpairedLoader
from tune.train import (
    GradientAccumulator,
    NonFiniteGuard,
    ThroughputMeter,
    clip_grad_norm,
    count_nonpadding_tokens,
)
from tune.train.steps.preference import (
    PreferenceObjective,
    add_stats,
    evaluate_preference,
    micro_batch_preference,
    preference_stats,
    summarize_stats,
)

logger = logging.getLogger(__name__)


def run(config: PreferenceConfig) -> dict[str, Any]:
    """Tune ``config.model`` on preference data and write HF / PEFT directories.

    Args:
        config: a validated preference config.

    Returns:
        Summary values (final step, last training metrics, last validation metrics, outputs).
    """
    return run_training(config, _train)


def _objective(cfg: PreferenceConfig) -> PreferenceObjective:
    loss = cfg.training.loss
    return PreferenceObjective(
        name=loss.name, beta=loss.beta, label_smoothing=loss.label_smoothing, tau=loss.tau,
        simpo_beta=loss.simpo_beta, simpo_gamma=loss.simpo_gamma, orpo_lambda=loss.orpo_lambda,
        desirable_weight=loss.desirable_weight, undesirable_weight=loss.undesirable_weight,
    )  # fmt: skip


def _chat_template(value: str | None) -> str | None:
    if value is not None and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def _columns(cfg: PreferenceConfig) -> dict[str, str] | None:
    return {expected: column for column, expected in cfg.data.column_map.items()} or None


def _paired_builder(cfg: PreferenceConfig, tokenizer: Any) -> PreferenceBuilder:
    return PreferenceBuilder(tokenizer, _chat_template(cfg.tokenizer.chat_template), _columns(cfg))


def _loader(cfg: PreferenceConfig, dataset: Any, tokenizer: Any, *, rank: int, world: int,
            train: bool) -> StreamingLoader:  # fmt: skip
    d = cfg.data
    columns = _columns(cfg)
    template = _chat_template(cfg.tokenizer.chat_template)
    kwargs: dict[str, Any] = {
        "batch_size": cfg.training.micro_batch_size, "max_seq_len": d.max_seq_len,
        "truncation": d.truncation, "seed": d.seed, "shuffle": d.shuffle and train,
        "epochs": None if train else 1, "rank": rank, "world_size": world, "drop_last": train,
    }  # fmt: skip
    if d.format == "unpaired":
        return UnpairedLoader(
            dataset, UnpairedBuilder(tokenizer, template, dataset, columns), **kwargs
        )
    return StreamingLoader(dataset, _paired_builder(cfg, tokenizer), **kwargs)


# Beyond the keys every recipe checks: a step written for another objective or reference model
# continues a different optimisation.
_PREFERENCE_RESUME_KEYS = ("training.loss", "model.reference_checkpoint_dir")


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _train(cfg: PreferenceConfig, rt: Any) -> dict[str, Any]:
    train_cfg, objective = cfg.training, _objective(cfg)
    out_dir = Path(cfg.checkpointing.output_dir)
    resolved = to_container(cfg)
    seed_everything(train_cfg.seed)

    # ---- policy, adapters, reference ------------------------------------------------------
    base_dir = Path(cfg.model.checkpoint_dir)
    ckpt, lora = load_for_method(
        base_dir, train_cfg.method, train_cfg.lora, dtype=rt.dtype, device=rt.device
    )
    model = ckpt.model
    adapters = lora is not None
    reference: nn.Module | None = None  # None: the policy with adapters disabled
    if objective.needs_reference and not adapters:
        ref_dir = cfg.model.reference_checkpoint_dir or base_dir
        reference = _frozen(load_pretrained(ref_dir, dtype=rt.dtype, device=rt.device).model)
        logger.info("reference: a frozen model loaded from %s", ref_dir)

    # ---- parallelism: activation checkpointing, then FSDP (policy and reference) -----------
    dp = setup_data_parallel(rt)
    distributed, dp_rank, dp_size, reduce = dp.distributed, dp.rank, dp.size, dp.reduce
    wrap_blocks(
        [model], activation_checkpointing=train_cfg.activation_checkpointing,
        compile=train_cfg.compile,
    )  # fmt: skip
    shard_with_fsdp([model, reference], dp, cfg.distributed)

    # ---- data: 2 x micro_batch_size sequences per forward (chosen rows, then rejected) -----
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    check_vocab_fits(
        tokenizer.vocab_size, ckpt.config.vocab_size, tokenizer_dir=cfg.tokenizer_dir,
        checkpoint_dir=base_dir,
    )  # fmt: skip
    d = cfg.data
    # Unpaired rows are checked as a whole (columns), paired ones row by row before the split.
    row_checks = None if d.format == "unpaired" else _paired_builder(cfg, tokenizer).validate
    train_ds, val_ds = split_source(
        d.source, d.split, d.validation_split, d.validation_fraction, d.seed, validate=row_checks
    )
    accum = train_cfg.gradient_accumulation_steps(dp_size)
    total_steps = train_cfg.max_steps or train_cfg.epochs * (
        len(train_ds) // train_cfg.global_batch_size
    )
    validate_config(cfg, ValidationContext(world_size=dp_size, total_steps=total_steps))
    train_loader = _loader(cfg, train_ds, tokenizer, rank=dp_rank, world=dp_size, train=True)

    # ---- optimization ---------------------------------------------------------------------
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
    # The unit of accumulation is the pair (KTO: the example), not the token.
    accumulator = GradientAccumulator(
        reduce, grad_average_world_size=dp_size if distributed else 1, device=rt.device
    )
    guard = NonFiniteGuard("halt" if train_cfg.nonfinite == "raise" else "skip")
    fused = train_cfg.fused_logprobs and not distributed  # a sharded output weight: plain logits
    softcap = getattr(ckpt.config, "final_logit_softcapping", None)

    # ---- resume ----------------------------------------------------------------------------
    manager = CheckpointManager(out_dir / "checkpoints", keep_last_n=cfg.checkpointing.keep_last_n)
    step, extra = resume_run(
        manager, cfg.checkpointing.resume, resolved,
        sources={"data.source": cfg.data.source, "tokenizer.path": cfg.tokenizer_dir},
        model=model, optimizer=optimizer, scheduler=scheduler, guard=guard, loader=train_loader,
        trainable_only=adapters, distributed=distributed, extra={"pairs_seen": 0},
        extra_keys=_PREFERENCE_RESUME_KEYS,
    )  # fmt: skip

    # ---- outputs and meters ----------------------------------------------------------------
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, out_dir / "config.yaml")
        metrics_log = build_loggers(
            cfg.logging.loggers, output_dir=out_dir, jsonl_path=cfg.logging.jsonl_path,
            options=cfg.logging.options, allow_imports=cfg.allow_imports,
            start_step=step,
        )  # fmt: skip
    meter = ThroughputMeter(device=rt.device)
    stopper = StopSignalHandler().install()
    model.train()

    reference_logprobs = reference_logprobs_fn(
        model, reference, objective, fused=fused, softcap=softcap
    )

    def run_eval(at_step: int) -> dict[str, float] | None:
        if val_ds is None:
            return None
        batches = _loader(cfg, val_ds, tokenizer, rank=dp_rank, world=dp_size, train=False)
        metrics = evaluate_preference(
            model, batches, objective, reference=reference_logprobs, fused=fused, softcap=softcap,
            max_batches=per_rank_batches(cfg.eval.max_batches, dp_size), reduce=reduce,
        )  # fmt: skip
        if rt.is_main:
            metrics_log.log(metrics, at_step)
        return metrics

    def save_state(at_step: int) -> Path:
        extra["guard"] = guard.state_dict()
        return save_training_state(
            manager, at_step, model=model, optimizer=optimizer, scheduler=scheduler,
            data_state=train_loader.state_dict(), extra=extra, config=resolved,
            trainable_only=adapters, distributed=distributed,
        )  # fmt: skip

    last_val = run_eval(step) if cfg.eval.before_training and step == 0 else None
    last: dict[str, float] = {}
    batches = iter(train_loader)
    bar = tqdm(total=total_steps, initial=step, disable=not (rt.is_main and cfg.logging.progress_bar),
               desc="preference", unit="step", dynamic_ncols=True)  # fmt: skip

    # ---- train -----------------------------------------------------------------------------
    while step < total_steps:
        meter.start()
        micro_batches = [
            {k: v.to(rt.device) for k, v in next(batches).items()} for _ in range(accum)
        ]
        accumulator.start_step([mb["tokens"].shape[0] // 2 for mb in micro_batches])
        stats = None
        for i, mb in enumerate(micro_batches):
            sync = getattr(model, "set_requires_gradient_sync", None)  # FSDP2 only
            if distributed and sync is not None:
                sync(i == len(micro_batches) - 1)
            result = micro_batch_preference(
                model, mb, objective, reference=reference_logprobs, fused=fused, softcap=softcap
            )
            accumulator.scale(result.losses.sum()).backward()
            stats = add_stats(stats, preference_stats(result, mb.get("desirable")))
        step_metrics = accumulator.finish_step()
        assert stats is not None
        grad_norm = clip_grad_norm(trainable, train_cfg.max_grad_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        lr = optimizer.param_groups[0]["lr"]
        guard.step(optimizer, step=step + 1, loss=step_metrics["loss"], grad_norm=grad_norm,
                   scheduler=scheduler)  # fmt: skip
        step += 1
        extra["pairs_seen"] = int(extra.get("pairs_seen", 0)) + int(step_metrics["num_tokens"])
        real_tokens = sum(
            count_nonpadding_tokens(mb["tokens"], mb["attention_mask"]) for mb in micro_batches
        )
        perf = meter.stop(real_tokens)
        last = {**summarize_stats(stats, reduce), "loss": step_metrics["loss"]}
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.2f}")
        if rt.is_main and (step % cfg.logging.log_every_n_steps == 0 or step == total_steps):
            metrics_log.log(
                {**last, "lr": lr, "grad_norm": float(grad_norm),
                 "num_pairs": step_metrics["num_tokens"], **perf, **guard.metrics()},
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
                return {"step": step, **last, "validation": last_val, "stopped": True}
    bar.close()
    stopper.uninstall()
    guard.check_trained()  # every step skipped as non-finite: fail, write nothing

    # ---- final evaluation and outputs ------------------------------------------------------
    if val_ds is not None and (cfg.eval.every_n_steps is None or step % cfg.eval.every_n_steps):
        last_val = run_eval(step)
    save_state(step)
    summary: dict[str, Any] = {"step": step, **last, "validation": last_val}
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
