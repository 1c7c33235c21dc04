"""The ``grpo`` loop: sample groups of completions, score them, learn — top to bottom.

Each step: this rank samples ``group_size`` completions for each of its prompts (the generation
backend), scores them with the reward functions, normalises rewards within each group
(advantages), computes old and reference log-probs once, then runs ``updates_per_rollout``
optimizer steps of the clipped policy loss on the batch. One process or FSDP2 under torchrun:
ranks sample for different prompts and the loss is normalised over all ranks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tune.checkpoint import CheckpointManager
from tune.data import PromptAnswerBuilder
from tune.dist import StopSignalHandler
from tune.peft import disable_adapters
from tune.recipes.common.data_loading import load_tokenizer, make_loader, split_source
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.metric_logging import build_loggers
from tune.recipes.common.model_loading import check_vocab_fits, load_pretrained
from tune.recipes.common.optimization import build_optimizer, build_schedule
from tune.recipes.common.outputs import write_final_outputs
from tune.recipes.common.parallelism import (
    set_gradient_sync,
    setup_data_parallel,
    shard_with_fsdp,
)
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.reward_registry import build_reward
from tune.recipes.common.rollout_backend import SamplingSettings, build_generation_backend
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
from tune.recipes.grpo.config import GRPOConfig
from tune.recipes.grpo.rollouts import (
    held_out_accuracy,
    prompt_rows,
    rollout_metrics,
    sample_and_score,
)
from tune.train import GradientAccumulator, NonFiniteGuard, clip_grad_norm
from tune.train.steps.grpo import (
    PolicyLossSettings,
    batched_logprobs,
    policy_backward,
    sampling_seed,
    with_logprobs,
)

logger = logging.getLogger(__name__)

# Settings that change the rollouts a step samples: a checkpoint of another run cannot continue.
GRPO_RESUME_KEYS = ("rollout.prompts_per_step", "rollout.group_size", "data.column_map")


def run(config: GRPOConfig) -> dict[str, Any]:
    """Train ``config.model`` with GRPO on ``config.data``; write HF / PEFT directories.

    Args:
        config: a validated GRPO config.

    Returns:
        Summary values (final step, held-out accuracy before and after, output paths).
    """
    return run_training(config, _train)


def _train(cfg: GRPOConfig, rt: Any) -> dict[str, Any]:
    train_cfg, roll = cfg.training, cfg.rollout
    out_dir = Path(cfg.checkpointing.output_dir)
    resolved = to_container(cfg)
    seed_everything(train_cfg.seed)

    # ---- policy, adapters, reference -----------------------------------------------------
    base_dir = Path(cfg.model.checkpoint_dir)
    ckpt, lora = load_for_method(
        base_dir, train_cfg.method, train_cfg.lora, dtype=rt.dtype, device=rt.device
    )
    model = ckpt.model
    adapters = lora is not None
    # Under adapters the reference is the policy with adapters disabled (no copy).
    reference = None
    if train_cfg.kl_coef > 0 and not adapters:
        reference = load_pretrained(base_dir, dtype=rt.dtype, device=rt.device).model
        reference.requires_grad_(False)

    # ---- parallelism: FSDP over data-parallel ranks ----------------------------------------
    dp = setup_data_parallel(rt, reduce_on_cpu=True)
    distributed, dp_rank, dp_size, reduce = dp.distributed, dp.rank, dp.size, dp.reduce
    shard_with_fsdp([model, reference], dp, cfg.distributed)

    # ---- prompts -----------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    check_vocab_fits(
        tokenizer.vocab_size, ckpt.config.vocab_size, tokenizer_dir=cfg.tokenizer_dir,
        checkpoint_dir=base_dir,
    )  # fmt: skip
    columns = {expected: column for column, expected in cfg.data.column_map.items()} or None
    builder = PromptAnswerBuilder(tokenizer, cfg.tokenizer.chat_template, columns=columns)
    train_ds, val_ds = split_source(
        cfg.data.source, cfg.data.split, None, cfg.data.validation_fraction, cfg.data.seed,
        validate=builder.validate,
    )  # fmt: skip
    if cfg.data.validation_source is not None:
        val_ds, _ = split_source(
            cfg.data.validation_source, "train", None, 0.0, cfg.data.seed,
            key="data.validation_source",
        )  # fmt: skip
    total_updates = train_cfg.max_steps * train_cfg.updates_per_rollout
    validate_config(cfg, ValidationContext(world_size=dp_size, total_steps=total_updates))
    prompts_per_rank = roll.prompts_per_step // dp_size
    loader = make_loader(
        train_ds, builder, batch_size=prompts_per_rank, max_seq_len=cfg.data.max_prompt_len,
        packing=False, truncation="drop", seed=cfg.data.seed, shuffle=cfg.data.shuffle,
        rank=dp_rank, world_size=dp_size, endless=True,
    )  # fmt: skip
    held_out = _held_out_prompts(val_ds, builder, cfg, dp_rank, dp_size)

    # ---- optimization --------------------------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, sched = train_cfg.optimizer, train_cfg.lr_schedule
    optimizer = build_optimizer(
        trainable, opt.name, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas,
        eps=opt.eps, kwargs=opt.kwargs, implementation=opt.implementation,
        allow_imports=cfg.allow_imports,
    )  # fmt: skip
    scheduler = build_schedule(
        optimizer, sched.name, warmup_steps=sched.warmup_steps, total_steps=total_updates,
        min_lr_ratio=sched.min_lr_ratio, allow_imports=cfg.allow_imports,
    )  # fmt: skip
    accumulator = GradientAccumulator(
        reduce, grad_average_world_size=dp_size if distributed else 1, device=rt.device
    )
    guard = NonFiniteGuard("halt" if train_cfg.nonfinite == "raise" else "skip")
    loss_settings = PolicyLossSettings(
        clip_eps=train_cfg.clip_eps, clip_eps_high=train_cfg.clip_eps_high,
        kl_coef=train_cfg.kl_coef, aggregation=train_cfg.loss_aggregation,
    )  # fmt: skip

    # ---- rollouts: generation backend, sampling, rewards -------------------------------------
    backend = build_generation_backend(
        roll.backend, model, pad_id=tokenizer.pad_id, distributed=distributed,
        options=roll.backend_options, allow_imports=cfg.allow_imports,
    )  # fmt: skip
    stops = tuple(dict.fromkeys([*([tokenizer.eos_id] if tokenizer.eos_id is not None else []),
                                 *roll.stop_token_ids]))  # fmt: skip
    sampling = SamplingSettings(
        roll.max_new_tokens, temperature=roll.temperature, top_p=roll.top_p, top_k=roll.top_k,
        stop_tokens=stops,
    )  # fmt: skip
    eval_sampling = SamplingSettings(
        roll.max_new_tokens, temperature=cfg.eval.temperature, top_p=roll.top_p,
        top_k=roll.top_k, stop_tokens=stops,
    )  # fmt: skip
    rewards = [
        build_reward(r.name, weight=r.weight, options=r.options, allow_imports=cfg.allow_imports)
        for r in cfg.rewards
    ]

    # ---- resume ----------------------------------------------------------------------------------
    manager = CheckpointManager(out_dir / "checkpoints", keep_last_n=cfg.checkpointing.keep_last_n)
    step, extra = resume_run(
        manager, cfg.checkpointing.resume, resolved,
        sources={"data.source": cfg.data.source, "tokenizer.path": cfg.tokenizer_dir},
        model=model, optimizer=optimizer, scheduler=scheduler, guard=guard, loader=loader,
        trainable_only=adapters, distributed=distributed, extra={"accuracy_before": None},
        extra_keys=GRPO_RESUME_KEYS,
    )  # fmt: skip

    # ---- outputs and meters ----------------------------------------------------------------------
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, out_dir / "config.yaml")
        metrics_log = build_loggers(
            cfg.logging.loggers, output_dir=out_dir, jsonl_path=cfg.logging.jsonl_path,
            options=cfg.logging.options, allow_imports=cfg.allow_imports,
            start_step=step,
        )  # fmt: skip
    stopper = StopSignalHandler().install()
    model.train()

    def run_eval(at_step: int) -> float | None:
        if held_out is None:
            return None
        accuracy = held_out_accuracy(
            backend, tokenizer, held_out[0], held_out[1], sampling=eval_sampling,
            batch_size=cfg.eval.batch_size, reduce=reduce, seed=train_cfg.seed + dp_rank,
        )  # fmt: skip
        if rt.is_main:
            metrics_log.log({"eval/accuracy": accuracy}, at_step)
        return accuracy

    def save_state(at_step: int) -> Path:
        extra["guard"] = guard.state_dict()
        return save_training_state(
            manager, at_step, model=model, optimizer=optimizer, scheduler=scheduler,
            data_state=loader.state_dict(), extra=extra, config=resolved,
            trainable_only=adapters, distributed=distributed,
        )  # fmt: skip

    if step == 0 and cfg.eval.before_training:
        extra["accuracy_before"] = run_eval(0)
    last_accuracy = None
    batches = iter(loader)
    bar = tqdm(total=train_cfg.max_steps, initial=step, desc="grpo", unit="step", dynamic_ncols=True,
               disable=not (rt.is_main and cfg.logging.progress_bar))  # fmt: skip

    # ---- train ---------------------------------------------------------------------------------
    while step < train_cfg.max_steps:
        prompts = next(batches)
        # 1. sample G completions per prompt and score them (this rank's prompts)
        gen_start = time.perf_counter()
        scored = sample_and_score(
            backend, tokenizer, prompt_rows(prompts), prompts["answers"],
            group_size=roll.group_size, sampling=sampling,
            seed=sampling_seed(train_cfg.seed, step, dp_rank), rewards=rewards,
            scale_rewards=train_cfg.scale_rewards, pad_id=tokenizer.pad_id,
        )  # fmt: skip
        gen_time = time.perf_counter() - gen_start
        metrics = rollout_metrics(scored, roll.group_size, reduce)

        # 2. old and reference log-probs, once per rollout batch
        train_start = time.perf_counter()
        batch = scored.batch.to(rt.device)
        mb = train_cfg.micro_batch_size
        old = None
        if train_cfg.updates_per_rollout > 1:  # with one update the current policy is the old one
            old = batched_logprobs(model, batch.tokens, batch.labels, mb)
        ref = None
        if train_cfg.kl_coef > 0:
            with disable_adapters(model) if adapters else contextlib.nullcontext():
                ref = batched_logprobs(reference or model, batch.tokens, batch.labels, mb)
        batch = with_logprobs(batch, old=old, reference=ref)

        # 3. several optimizer steps on the batch
        updates: list[dict[str, float]] = []
        for u in range(train_cfg.updates_per_rollout):
            update = policy_backward(
                model, batch, settings=loss_settings, micro_batch_size=mb,
                accumulator=accumulator, before_micro_batch=_gradient_sync(model, distributed),
            )  # fmt: skip
            grad_norm = clip_grad_norm(trainable, train_cfg.max_grad_norm)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            update["grad_norm"] = float(grad_norm)
            update["lr"] = optimizer.param_groups[0]["lr"]
            guard.step(optimizer, step=step * train_cfg.updates_per_rollout + u + 1, loss=update["loss"], grad_norm=grad_norm,
                       scheduler=scheduler)  # fmt: skip
            updates.append(update)
        backend.sync_weights(model)
        train_time = time.perf_counter() - train_start
        step += 1

        # 4. metrics: rewards, lengths, loss, clipping, KL, generation and training tokens/s
        metrics.update(_mean_updates(updates, reduce, dp_size))
        real_tokens = torch.tensor(
            [float((batch.tokens != tokenizer.pad_id).sum()), float(scored.completion_tokens.sum())]
        )
        if reduce is not None:
            real_tokens = reduce(real_tokens)
        metrics["generation_tokens_per_s"] = float(real_tokens[1]) / max(gen_time, 1e-9)
        metrics["training_tokens_per_s"] = (
            float(real_tokens[0]) * train_cfg.updates_per_rollout / max(train_time, 1e-9)
        )
        metrics.update(guard.metrics())
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}")
        if rt.is_main and (
            step % cfg.logging.log_every_n_steps == 0 or step == train_cfg.max_steps
        ):
            metrics_log.log(metrics, step)
        if cfg.eval.every_n_steps and step % cfg.eval.every_n_steps == 0:
            last_accuracy = run_eval(step)
        every = cfg.checkpointing.save_every_n_steps
        stop = stopper.should_stop()  # a collective: exactly once per step on every rank
        if (every and step % every == 0 and step < train_cfg.max_steps) or stop:
            save_state(step)
            if stop:
                logger.warning("stop signal received: saved step %d, exiting", step)
                bar.close()
                stopper.uninstall()
                return {"step": step, "stopped": True}
    bar.close()
    stopper.uninstall()
    guard.check_trained()  # every step skipped as non-finite: fail, write nothing

    # ---- final evaluation and outputs --------------------------------------------------------------
    if held_out is not None and (cfg.eval.every_n_steps is None or step % cfg.eval.every_n_steps):
        last_accuracy = run_eval(step)
    save_state(step)
    summary: dict[str, Any] = {
        "step": step,
        "accuracy_before": extra.get("accuracy_before"),
        "accuracy_after": last_accuracy,
    }
    summary.update(
        write_final_outputs(
            out_dir, model, ckpt, base_dir, method=train_cfg.method, lora=lora, dtype=rt.dtype,
            save_adapter=cfg.checkpointing.save_adapter, save_merged=cfg.checkpointing.save_merged,
            is_main=rt.is_main, distributed=distributed,
        )
    )  # fmt: skip
    if rt.is_main:
        metrics_log.close()
    return summary


def _held_out_prompts(
    val_ds: Any, builder: PromptAnswerBuilder, cfg: GRPOConfig, rank: int, world: int
) -> tuple[list[list[int]], list[str]] | None:
    """This rank's equal share of the held-out prompts (token lists) and answers."""
    if val_ds is None:
        return None
    count = len(val_ds) if cfg.eval.max_prompts is None else min(len(val_ds), cfg.eval.max_prompts)
    count -= count % world  # equal shares: sharded models decode in lockstep
    if count == 0:
        raise ValueError(f"{len(val_ds)} held-out prompts cannot be shared by {world} ranks")
    samples = [builder(val_ds[i], i) for i in range(rank, count, world)]
    return [s["prompt_tokens"] for s in samples], [s["answer"] for s in samples]


def _gradient_sync(model: torch.nn.Module, distributed: bool) -> Any:
    if not (distributed and hasattr(model, "set_requires_gradient_sync")):
        return None

    def before(index: int, count: int) -> None:
        set_gradient_sync(model, index == count - 1)

    return before


def _mean_updates(updates: list[dict[str, float]], reduce: Any, ranks: int) -> dict[str, float]:
    """Means over the optimizer steps of a rollout batch (clip fraction and KL over all ranks)."""
    n = len(updates)
    mean = {k: sum(u[k] for u in updates) / n for k in ("loss", "grad_norm", "lr")}
    local = torch.tensor(
        [sum(u["clip_fraction"] for u in updates) / n, sum(u["kl"] for u in updates) / n]
    )
    if reduce is not None:
        local = reduce(local.double()) / ranks
    mean["clip_fraction"], mean["kl"] = float(local[0]), float(local[1])
    return mean
