"""The ``grpo`` recipe: sample groups of completions, score them, learn — top to bottom.

Each step: this rank samples ``group_size`` completions for each of its prompts (the generation
backend), scores them with the reward functions, normalises rewards within each group
(advantages), computes old and reference log-probs once, then runs ``updates_per_rollout``
optimizer steps of the clipped policy loss on the batch. One process, FSDP2 or tensor parallel
under torchrun: ranks sample for different prompts and the loss is normalised over all ranks.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from tune.data import make_loader, split_source
from tune.dist import seed_everything
from tune.peft import disable_adapters
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.parallelism import parallelize_models, setup_data_parallel
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import Runtime
from tune.recipes.common.training_run import StepResult, checked_tokenizer, drive, finish, start_run
from tune.recipes.grpo import setup
from tune.recipes.grpo.backend import build_generation_backend
from tune.recipes.grpo.config import GRPOConfig
from tune.train.rl import (
    batched_logprobs,
    held_out_accuracy,
    policy_backward,
    prompt_rows,
    rollout_metrics,
    rollout_throughput,
    sample_and_score,
    sampling_seed,
    update_metrics,
    with_logprobs,
)


def run(config: GRPOConfig) -> dict[str, Any]:
    """Train ``config.model`` with GRPO on ``config.data``; write HF / PEFT directories.

    Returns:
        Summary values (final step, held-out accuracy before and after, output paths).
    """
    return run_training(config, _train)


def _train(cfg: GRPOConfig, rt: Runtime) -> dict[str, Any]:
    t, roll, d = cfg.training, cfg.rollout, cfg.data
    seed_everything(t.seed)

    # ---- policy, adapters, reference (under adapters: the policy with them disabled) --------
    ckpt, lora = load_for_method(
        cfg.model.checkpoint_dir, t.method, t.lora, dtype=rt.dtype, device=rt.device
    )
    model, adapters = ckpt.model, lora is not None
    reference = setup.frozen_reference(cfg, adapters=adapters, rt=rt)
    dp = setup_data_parallel(rt, tp_size=cfg.distributed.tp_size)
    # Decoding steps one token at a time: no sequence-parallel split of activations.
    parallelize_models(
        [model, reference], dp, cfg.distributed, model_config=ckpt.config, sequence_parallel=False
    )

    # ---- prompts, rollouts: generation backend, sampling, rewards ----------------------------
    tokenizer = checked_tokenizer(cfg, ckpt)
    builder = setup.prompt_builder(cfg, tokenizer)
    train_ds, val_ds = split_source(
        d.source, d.split, None, d.validation_fraction, d.seed, validate=builder.validate
    )
    if d.validation_source is not None:
        val_ds, _ = split_source(d.validation_source, "train", None, 0.0, d.seed,
                                 key="data.validation_source")  # fmt: skip
    loader = make_loader(
        train_ds, builder, batch_size=roll.prompts_per_step // dp.size,
        max_seq_len=d.max_prompt_len, packing=False, truncation="drop", seed=d.seed,
        shuffle=d.shuffle, rank=dp.rank, world_size=dp.size, endless=True,
    )  # fmt: skip
    held_out = setup.held_out_prompts(val_ds, builder, cfg, dp.rank, dp.size)
    backend = build_generation_backend(
        roll.backend, model, pad_id=tokenizer.pad_id, distributed=dp.distributed,
        options=roll.backend_options, allow_imports=cfg.allow_imports,
    )  # fmt: skip
    sampling, eval_sampling = setup.sampling_settings(cfg, tokenizer.eos_id)
    rewards = setup.rewards(cfg)
    run = start_run(
        cfg, rt, dp, ckpt, lora, loader=loader, total_steps=t.max_steps,
        schedule_steps=t.max_steps * t.updates_per_rollout, extra={"accuracy_before": None},
        extra_keys=setup.GRPO_RESUME_KEYS,
    )  # fmt: skip
    driver, mb = run.driver, t.micro_batch_size
    loss_settings = setup.policy_loss(cfg)
    sync = driver.gradient_sync  # FSDP2: gradients synchronised on the last micro-batch only
    before_micro_batch = (lambda i, n: sync(i == n - 1)) if sync is not None else None
    batches = iter(loader)

    # ---- one step: sample and score, log-probs once, several optimizer steps -----------------
    def step_fn(step: int) -> StepResult:
        prompts, gen_start = next(batches), time.perf_counter()
        scored = sample_and_score(
            backend, tokenizer, prompt_rows(prompts), prompts["answers"],
            group_size=roll.group_size, sampling=sampling,
            seed=sampling_seed(t.seed, step, dp.rank), rewards=rewards,
            scale_rewards=t.scale_rewards, pad_id=tokenizer.pad_id,
        )  # fmt: skip
        gen_time, train_start = time.perf_counter() - gen_start, time.perf_counter()
        metrics = rollout_metrics(scored, roll.group_size, dp.reduce)
        batch = scored.batch.to(rt.device)
        old = ref = None
        if t.updates_per_rollout > 1:  # with one update the current policy is the old one
            old = batched_logprobs(model, batch.tokens, batch.labels, mb)
        if t.kl_coef > 0:
            with disable_adapters(model) if adapters else contextlib.nullcontext():
                ref = batched_logprobs(reference or model, batch.tokens, batch.labels, mb)
        batch = with_logprobs(batch, old=old, reference=ref)
        updates = []
        for u in range(t.updates_per_rollout):
            update = policy_backward(
                model, batch, settings=loss_settings, micro_batch_size=mb,
                accumulator=driver.accumulator, before_micro_batch=before_micro_batch,
            )  # fmt: skip
            update.update(driver.optimizer_step(step * t.updates_per_rollout + u + 1,
                                                loss=update["loss"]))  # fmt: skip
            updates.append(update)
        backend.sync_weights(model)
        metrics.update(update_metrics(updates, dp.reduce, dp.size))
        metrics.update(rollout_throughput(
            batch.tokens != tokenizer.pad_id, scored.completion_tokens, dp.reduce,
            generation_s=gen_time, training_s=time.perf_counter() - train_start,
            updates=t.updates_per_rollout,
        ))  # fmt: skip
        return StepResult(metrics)

    def evaluate(step: int) -> dict[str, float]:
        assert held_out is not None
        accuracy = held_out_accuracy(
            backend, tokenizer, *held_out, sampling=eval_sampling,
            batch_size=cfg.eval.batch_size, reduce=dp.reduce, seed=t.seed + dp.rank,
        )  # fmt: skip
        if step == 0:
            run.extra["accuracy_before"] = accuracy
        return {"eval/accuracy": accuracy}

    result = drive(run, step_fn, evaluate=evaluate if held_out is not None else None,
                   desc="grpo", postfix=("reward/mean",))  # fmt: skip
    after = [v["eval/accuracy"] for s, v in result.evaluations.items() if s > 0]
    summary = {"step": result.step, "accuracy_before": run.extra.get("accuracy_before"),
               "accuracy_after": after[-1] if after else None}  # fmt: skip
    return finish(run, result, summary)
