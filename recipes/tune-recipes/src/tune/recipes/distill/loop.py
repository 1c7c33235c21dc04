"""The ``distill`` recipe: knowledge distillation of a frozen teacher into a student.

Setup, step, save — top to bottom. A frozen teacher (eval mode, no gradients; laid out like the
student: tensor parallel and FSDP, so it never sits whole on a rank) provides a target
distribution at every labelled position; the student (full or adapters) is trained on
``ce_weight * CE + (1 - ce_weight) * KL`` (tune.train.steps.distillation).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tune.dist import seed_everything
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.parallelism import parallelize_models, setup_data_parallel
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import DTYPES, Runtime
from tune.recipes.common.token_data import token_data
from tune.recipes.common.training_run import (
    StepResult,
    checked_tokenizer,
    drive,
    finish,
    start_run,
)
from tune.recipes.distill.config import DistillConfig
from tune.recipes.distill.setup import DISTILL_RESUME_KEYS, compared_vocab_size, load_teacher
from tune.train.steps.distillation import (
    DistillLossSettings,
    distill_micro_batch_loss,
    evaluate_distillation,
)


def run(config: DistillConfig) -> dict[str, Any]:
    """Distill ``config.teacher`` into ``config.model`` on ``config.data``; write HF / PEFT dirs.

    Returns:
        Summary values (final step, last training loss, last validation CE and KL, output paths).
    """
    return run_training(config, _train)


def _train(cfg: DistillConfig, rt: Runtime) -> dict[str, Any]:
    t, kd = cfg.training, cfg.distillation
    seed_everything(t.seed)

    # ---- student (full or adapters), frozen teacher, parallel layout -------------------------
    ckpt, lora = load_for_method(
        cfg.model.checkpoint_dir, t.method, t.lora, dtype=rt.dtype, device=rt.device
    )
    model = ckpt.model
    teacher_dir = cfg.teacher.checkpoint_dir
    teacher = load_teacher(teacher_dir, dtype=DTYPES[cfg.teacher.dtype], device=rt.device).model
    tokenizer = checked_tokenizer(cfg, ckpt)
    settings = DistillLossSettings(
        kind=kd.kind, temperature=kd.temperature, symmetric_mix=kd.symmetric_mix,
        ce_weight=kd.ce_weight, chunk_size=kd.chunk_size,
        vocab_size=compared_vocab_size(
            model, teacher, tokenizer.vocab_size, teacher_dir=teacher_dir
        ),
    )  # fmt: skip
    dp = setup_data_parallel(rt, tp_size=cfg.distributed.tp_size)
    parallelize_models(
        [model, teacher], dp, cfg.distributed, model_config=ckpt.config,
        activation_checkpointing=t.activation_checkpointing, compile=t.compile,
    )  # fmt: skip

    # ---- data and the run's shared parts (optimizer, schedule, resume, loggers, driver) -------
    data = token_data(cfg, tokenizer, dp, rt.device)
    run = start_run(
        cfg, rt, dp, ckpt, lora, loader=data.loader, total_steps=data.total_steps,
        extra={"tokens_seen": 0}, extra_keys=DISTILL_RESUME_KEYS,
    )  # fmt: skip
    driver, accum = run.driver, t.gradient_accumulation_steps(dp.size)

    # ---- one optimizer step: CE and KL summed over trained tokens, normalised globally ---------
    def step_fn(step: int) -> StepResult:
        mbs, tokens = data.next_micro_batches(accum)
        parts = torch.zeros(2, dtype=torch.float64, device=rt.device)  # summed CE, KL

        def loss(mb: dict[str, Any]) -> Any:
            nonlocal parts
            out = distill_micro_batch_loss(model, teacher, mb, settings)
            parts = parts + torch.stack([out.ce_sum, out.kl_sum]).double()
            return out.total

        metrics = driver.accumulate(mbs, loss, count=lambda mb: (mb["labels"] != -100).sum())
        summed = dp.reduce(parts) if dp.reduce is not None else parts
        ce, kl = (summed / max(metrics["num_tokens"], 1)).tolist()
        metrics.update(ce=ce, kl=kl, **driver.optimizer_step(step + 1))
        run.extra["tokens_seen"] = run.extra.get("tokens_seen", 0) + tokens
        return StepResult(metrics, tokens)

    def evaluate(step: int) -> dict[str, float]:
        values = evaluate_distillation(
            model, teacher, data.validation_batches(), settings,
            max_batches=data.max_eval_batches, reduce=dp.reduce,
        )  # fmt: skip
        return {**values, "val_ppl": math.exp(min(values["val_loss"], 50))}

    result = drive(
        run, step_fn, evaluate=evaluate if data.has_validation else None, desc="distill",
        postfix=("loss", "kl"),
    )  # fmt: skip
    summary = {"step": result.step, "loss": result.metrics.get("loss", float("nan")),
               "val": result.evaluation}  # fmt: skip
    return finish(run, result, summary)
