"""The ``preference`` recipe: DPO, IPO, SimPO, ORPO, KTO, reference-free DPO.

Setup, step, save — top to bottom. The reference model is the policy with its adapters
disabled for LoRA/QLoRA/DoRA (no copy, no extra memory), or a frozen second model for full
tuning (one more set of weights in the model dtype, no gradients or optimizer state; laid out
like the policy: tensor parallel and FSDP). Chosen and rejected responses go through one
forward (tune.train.steps.preference).
"""

from __future__ import annotations

from typing import Any

from tune.data import per_rank_batches, split_source
from tune.dist import seed_everything
from tune.recipes.common.finetune_method import load_for_method
from tune.recipes.common.parallelism import parallelize_models, setup_data_parallel
from tune.recipes.common.recipe_run import run_training
from tune.recipes.common.runtime import Runtime
from tune.recipes.common.training_run import (
    StepResult,
    checked_tokenizer,
    drive,
    finish,
    start_run,
)
from tune.recipes.preference.config import PreferenceConfig
from tune.recipes.preference.reference import reference_logprobs_fn
from tune.recipes.preference.setup import (
    PREFERENCE_RESUME_KEYS,
    frozen_reference,
    objective,
    paired_builder,
    preference_loader,
)
from tune.train import count_nonpadding_tokens
from tune.train.steps.preference import (
    add_stats,
    evaluate_preference,
    micro_batch_preference,
    preference_stats,
    summarize_stats,
)
from tune.train.steps.router import RouterObjective


def run(config: PreferenceConfig) -> dict[str, Any]:
    """Tune ``config.model`` on preference data and write HF / PEFT directories.

    Returns:
        Summary values (final step, last training metrics, last validation metrics, outputs).
    """
    return run_training(config, _train)


def _train(cfg: PreferenceConfig, rt: Runtime) -> dict[str, Any]:
    t, d, obj = cfg.training, cfg.data, objective(cfg)
    seed_everything(t.seed)

    # ---- policy, adapters, reference, parallel layout ---------------------------------------
    ckpt, lora = load_for_method(
        cfg.model.checkpoint_dir, t.method, t.lora, dtype=rt.dtype, device=rt.device,
        implementation=cfg.model.implementation,
    )  # fmt: skip
    model = ckpt.model
    reference = frozen_reference(cfg, adapters=lora is not None, rt=rt)
    piped = None
    if cfg.distributed.pp_size > 1 and rt.dist.is_distributed:  # this rank keeps its stages
        # imported here: torch.distributed.pipelining and DTensor cost ~0.5 s of start-up
        from tune.recipes.common.pipeline_run import pipelined_checkpoint
        from tune.recipes.preference.pipeline import PreferencePipeline
        from tune.train.steps.preference_pairs import PairedObjective

        paired = PairedObjective(obj)
        ckpt, dp, staged = pipelined_checkpoint(
            ckpt, rt, cfg, micro_batch_size=2 * t.micro_batch_size, loss_sum=paired
        )
        piped, model = PreferencePipeline(staged, paired, adapters=lora is not None), ckpt.model
    else:
        dp = setup_data_parallel(rt, tp_size=cfg.distributed.tp_size)
        parallelize_models(
            [model, reference], dp, cfg.distributed, model_config=ckpt.config,
            activation_checkpointing=t.activation_checkpointing, compile=t.compile,
        )  # fmt: skip

    # ---- data: 2 x micro_batch_size sequences per forward (chosen rows, then rejected) -----
    tokenizer = checked_tokenizer(cfg, ckpt)
    # Unpaired rows are checked as a whole (columns), paired ones row by row before the split.
    row_checks = None if d.format == "unpaired" else paired_builder(cfg, tokenizer).validate
    train_ds, val_ds = split_source(
        d.source, d.split, d.validation_split, d.validation_fraction, d.seed, validate=row_checks
    )
    total_steps = t.max_steps or t.epochs * (len(train_ds) // t.global_batch_size)
    loader = preference_loader(cfg, train_ds, tokenizer, rank=dp.rank, world=dp.size, train=True)
    run = start_run(
        cfg, rt, dp, ckpt, lora, loader=loader, total_steps=total_steps,
        extra={"pairs_seen": 0}, extra_keys=PREFERENCE_RESUME_KEYS,
    )  # fmt: skip
    driver, accum = run.driver, t.gradient_accumulation_steps(dp.size)
    if piped is not None:
        from tune.recipes.common.pipeline_run import clip_across_stages

        clip_across_stages(driver, piped.run)
    # A sharded output weight needs plain logits; so does an HF head (it may scale its logits).
    fused = t.fused_logprobs and not dp.distributed and ckpt.implementation == "native"
    softcap = getattr(ckpt.config, "final_logit_softcapping", None)
    ref_fn = reference_logprobs_fn(model, reference, obj, fused=fused, softcap=softcap)
    batches = iter(loader)
    m = cfg.model  # a MoE policy's router losses, expert-load metrics and routing-bias update
    router = RouterObjective(
        aux_loss_coef=m.router_aux_loss_coef, z_loss_coef=m.router_z_loss_coef,
        aux_loss=m.router_aux_loss, bias_update_rate=m.routing_bias_update_rate,
    )  # fmt: skip

    # ---- one optimizer step; the unit of accumulation is the pair (KTO: the example) ----------
    def step_fn(step: int) -> StepResult:
        mbs = [{k: v.to(rt.device) for k, v in next(batches).items()} for _ in range(accum)]
        if piped is not None:  # the schedule runs forward and backward of every stage
            metrics = piped.step(mbs)
            metrics.update(driver.optimizer_step(step + 1, loss=metrics["loss"]))
            run.extra["pairs_seen"] = int(run.extra.get("pairs_seen", 0)) + metrics["num_pairs"]
            tokens = sum(count_nonpadding_tokens(mb["tokens"], mb["attention_mask"]) for mb in mbs)
            return StepResult(metrics, tokens)
        stats: list[Any] = [None]

        def loss(mb: dict[str, Any]) -> Any:
            result = micro_batch_preference(
                model, mb, obj, reference=ref_fn, fused=fused, softcap=softcap, router=router
            )
            stats[0] = add_stats(stats[0], preference_stats(result, mb.get("desirable")))
            return result.losses.sum()

        step_metrics = driver.accumulate(mbs, loss, count=lambda mb: mb["tokens"].shape[0] // 2)
        metrics = {**summarize_stats(stats[0], dp.reduce), "loss": step_metrics["loss"],
                   "num_pairs": step_metrics["num_tokens"]}  # fmt: skip
        applied = driver.optimizer_step(step + 1)  # the bias moves only when the weights do
        metrics.update(router.finish_step(model, dp.reduce, update_bias=driver.step_applied))
        metrics.update(applied)
        run.extra["pairs_seen"] = int(run.extra.get("pairs_seen", 0)) + int(metrics["num_pairs"])
        tokens = sum(count_nonpadding_tokens(mb["tokens"], mb["attention_mask"]) for mb in mbs)
        return StepResult(metrics, tokens)

    def evaluate(step: int) -> dict[str, float]:
        if piped is not None:
            held_out = preference_loader(cfg, val_ds, tokenizer, rank=dp.rank, world=dp.size,
                                         train=False)  # fmt: skip
            return piped.evaluate(held_out, accum, per_rank_batches(cfg.eval.max_batches, dp.size))
        return evaluate_preference(
            model, preference_loader(cfg, val_ds, tokenizer, rank=dp.rank, world=dp.size,
                                     train=False),
            obj, reference=ref_fn, fused=fused, softcap=softcap,
            max_batches=per_rank_batches(cfg.eval.max_batches, dp.size), reduce=dp.reduce,
        )  # fmt: skip

    result = drive(
        run, step_fn, evaluate=evaluate if val_ds is not None else None, desc="preference",
        postfix=("loss", "accuracy"),
    )  # fmt: skip
    summary = {"step": result.step, **result.metrics, "validation": result.evaluation}
    return finish(run, result, summary)
