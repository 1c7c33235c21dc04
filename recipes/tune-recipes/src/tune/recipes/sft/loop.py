"""The ``sft`` recipe: supervised fine-tuning (full, LoRA, QLoRA, DoRA; optional QAT).

Setup, step, save — top to bottom. The model comes from tune.models (adapters tune.peft,
NF4/QAT tune.quant), the data from tune.data, the parallel layout from tune.dist, the loss and
the run driver from tune.train, checkpoints from tune.checkpoint. The same code runs on one
device and under torchrun (FSDP2, optionally tensor parallel).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from tune.dist import context_split, seed_everything
from tune.models import ep_plan
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.layout_checks import reject_routed_experts
from tune.recipes.common.parallelism import parallelize_models, setup_data_parallel
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import Runtime
from tune.recipes.common.token_data import token_data
from tune.recipes.common.training_run import (
    StepResult,
    checked_tokenizer,
    drive,
    finish,
    start_run,
)
from tune.recipes.sft.config import SFTConfig
from tune.train.steps.router import RouterObjective
from tune.train.steps.token import evaluate_token_loss, micro_batch_loss


def run(config: SFTConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data`` and write HF / PEFT directories.

    Returns:
        Summary values (final step, last training loss, last validation loss, output paths).
    """
    return run_training(config, _train)


def _train(cfg: SFTConfig, rt: Runtime) -> dict[str, Any]:
    t = cfg.training
    seed_everything(t.seed)

    # ---- model, adapters, quantization-aware training, parallel layout ----------------------
    base_dir = Path(cfg.model.checkpoint_dir)
    ckpt, lora = load_for_method(
        base_dir, t.method, t.lora, dtype=rt.dtype, device=rt.device,
        implementation=cfg.model.implementation,
    )  # fmt: skip
    model = ckpt.model
    if cfg.qat.scheme is not None:  # after the adapters, which replace the linear layers
        from tune.quant import prepare_qat  # torchao: imported only for a QAT run

        prepare_qat(model, cfg.qat.scheme, exclude=list(cfg.qat.exclude))
    piped = None
    if cfg.distributed.pp_size > 1 and rt.dist.is_distributed:  # this rank keeps its stages
        # imported here: torch.distributed.pipelining and DTensor cost ~0.5 s of start-up
        from tune.recipes.common.pipeline_run import pipelined_checkpoint

        ckpt, dp, piped = pipelined_checkpoint(ckpt, rt, cfg, micro_batch_size=t.micro_batch_size)
        model = ckpt.model
    else:
        dp = setup_data_parallel(rt, tp_size=cfg.distributed.tp_size)
        parallelize_models(
            [model], dp, cfg.distributed, model_config=ckpt.config,
            activation_checkpointing=t.activation_checkpointing,
            activation_offloading=t.activation_offloading, compile=t.compile,
        )  # fmt: skip
    cp = context_split(dp, cfg.distributed.cp_size)  # None unless distributed.cp_size > 1
    if cp is not None:
        reject_routed_experts(model, bool(ep_plan(model)), "cp_size")

    # ---- data and the run's shared parts (optimizer, schedule, resume, loggers, driver) -------
    data = token_data(cfg, checked_tokenizer(cfg, ckpt), cp.data if cp else dp, rt.device)
    run = start_run(
        cfg, rt, dp, ckpt, lora, loader=data.loader, total_steps=data.total_steps,
        extra={"tokens_seen": 0},
    )  # fmt: skip
    driver = run.driver
    if piped is not None:
        from tune.recipes.common.pipeline_run import clip_across_stages

        clip_across_stages(driver, piped)
    accum = t.gradient_accumulation_steps(cp.data.size if cp else dp.size)
    # A sharded output weight needs plain CE; so does an HF head (it may scale its logits).
    fused = t.fused_ce and not dp.distributed and ckpt.implementation == "native"
    softcap = getattr(ckpt.config, "final_logit_softcapping", None)
    m = cfg.model  # a MoE model's router losses, expert-load metrics and routing-bias update
    router = RouterObjective(
        aux_loss_coef=m.router_aux_loss_coef, z_loss_coef=m.router_z_loss_coef,
        aux_loss=m.router_aux_loss, bias_update_rate=m.routing_bias_update_rate,
    )  # fmt: skip

    # ---- one optimizer step: token-normalised accumulation over micro-batches ----------------
    def step_fn(step: int) -> StepResult:
        mbs, tokens = data.next_micro_batches(accum)
        if cp is not None:  # this rank's zig-zag share of each sequence
            mbs, tokens = [cp.shard(mb) for mb in mbs], tokens // cp.size
        if piped is not None:  # the schedule runs forward and backward of every stage
            metrics = piped.step(mbs)
        else:
            metrics = driver.accumulate(
                mbs, lambda mb: micro_batch_loss(model, cp.attend(mb) if cp else mb, fused=fused,
                                                 softcap=softcap, router=router),
                count=lambda mb: (mb["labels"] != -100).sum(),
            )  # fmt: skip
        # the routing bias moves only when the weights do
        applied = driver.optimizer_step(step + 1, loss=metrics["loss"])
        metrics.update(router.finish_step(model, dp.reduce, update_bias=driver.step_applied))
        metrics.update(applied)
        run.extra["tokens_seen"] = run.extra.get("tokens_seen", 0) + tokens
        return StepResult(metrics, tokens)

    def evaluate(step: int) -> dict[str, float]:
        batches = data.validation_batches()
        if piped is not None:
            val_loss = piped.validation_loss(batches, accum, data.max_eval_batches)
            return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
        val_loss = evaluate_token_loss(
            model, cp.validation(batches, rt.device) if cp else batches, fused=fused, softcap=softcap,
            max_batches=data.max_eval_batches, reduce=dp.reduce,
        )  # fmt: skip
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}

    with cp.installed(model) if cp else contextlib.nullcontext():
        result = drive(run, step_fn, evaluate=evaluate if data.has_validation else None,
                       desc="sft")  # fmt: skip

    # ---- outputs: HF / PEFT directories, then the quantized model of a QAT run ------------------
    val = result.evaluation
    summary = finish(run, result, {
        "step": result.step, "loss": result.metrics.get("loss", float("nan")),
        "val_loss": val["val_loss"] if val else None,
    })  # fmt: skip
    if cfg.qat.scheme is not None and not result.stopped:  # last: replaces the float weights
        from tune.recipes.common.qat_outputs import write_quantized_output

        summary.update(
            write_quantized_output(
                Path(cfg.checkpointing.output_dir), model, ckpt, base_dir, scheme=cfg.qat.scheme,
                exclude=cfg.qat.exclude, method=t.method, lora=lora, dtype=rt.dtype,
                is_main=rt.is_main, distributed=dp.distributed,
            )
        )  # fmt: skip
    return summary
