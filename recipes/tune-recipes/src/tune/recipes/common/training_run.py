"""What every training recipe wires the same way around its step function.

``start_run`` builds the optimizer, schedule, accumulator and guard from the shared config
sections, resumes from the run's checkpoints, opens the loggers and makes tune.train's
``TrainingDriver``; ``drive`` runs it with the stop handler and progress bar; ``finish`` writes
the HF / PEFT outputs. A recipe keeps its model and data setup and its step function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from tune.checkpoint import CheckpointManager
from tune.config import ValidationContext, to_container, validate_config
from tune.data import Tokenizer
from tune.data.tokenizer import check_vocab_fits
from tune.dist import DataParallel, StopSignalHandler
from tune.recipes.common.metric_logging import build_loggers, metrics_file
from tune.recipes.common.optimization import build_optimizer, build_schedule
from tune.recipes.common.outputs import write_final_outputs
from tune.recipes.common.runtime import Runtime
from tune.recipes.common.train_state import resume_run, save_training_state
from tune.recipes.config import save_resolved_config
from tune.train import GradientAccumulator, NonFiniteGuard, seconds_since_process_start
from tune.train.driver import Cadence, RunResult, StepResult, TrainingDriver
from tune.train.loggers import can_plot, plot_loss_curve

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """A training run's shared parts, from ``start_run``.

    Args:
        cfg, rt, dp: the recipe config, the runtime and the data-parallel layout.
        ckpt, lora: the loaded checkpoint (``.model`` is trained) and the adapter config.
        driver: tune.train's run driver (optimizer, schedule, guard, accumulator, cadence).
        step: the step the run starts from (resumed or 0).
        extra: counters saved with every checkpoint.
        sink: the metric loggers (rank 0 only).
    """

    cfg: Any
    rt: Runtime
    dp: DataParallel
    ckpt: Any
    lora: Any
    driver: TrainingDriver
    step: int
    extra: dict[str, Any]
    sink: Any = None

    @property
    def model(self) -> nn.Module:
        """The trained model."""
        return self.ckpt.model  # type: ignore[no-any-return]


def checked_tokenizer(cfg: Any, ckpt: Any) -> Any:
    """The config's tokenizer, after checking its vocabulary fits the model's embeddings."""
    tokenizer = Tokenizer.from_dir(cfg.tokenizer_dir)
    check_vocab_fits(
        tokenizer.vocab_size, ckpt.config.vocab_size, tokenizer_dir=cfg.tokenizer_dir,
        checkpoint_dir=Path(cfg.model.checkpoint_dir),
    )  # fmt: skip
    return tokenizer


def start_run(
    cfg: Any,
    rt: Runtime,
    dp: DataParallel,
    ckpt: Any,
    lora: Any,
    *,
    loader: Any,
    total_steps: int,
    extra: Mapping[str, Any],
    extra_keys: Sequence[str] = (),
    schedule_steps: int | None = None,
    sources: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Validate against the run's shape, build the optimization, resume, open the loggers.

    Args:
        cfg: a training recipe's config (shared ``training``, ``checkpointing``, ``eval``,
            ``logging`` sections).
        rt, dp: the runtime and data-parallel layout.
        ckpt, lora: the loaded model (``ckpt.model`` is trained) and its adapter config.
        loader: the training loader (its position is saved and restored).
        total_steps: the run's steps.
        extra: the recipe's counters, saved with every step.
        extra_keys: config keys (beyond the shared ones) that must not change on resume.
        schedule_steps: optimizer steps the LR schedule spans (default ``total_steps``).
        sources: config key -> input file fingerprinted for resume (default: data and tokenizer).
    """
    t, model = cfg.training, ckpt.model
    updates = schedule_steps or total_steps
    validate_config(cfg, ValidationContext(world_size=rt.dist.world_size, total_steps=updates))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, sched = t.optimizer, t.lr_schedule
    optimizer = build_optimizer(
        trainable, opt.name, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas,
        eps=opt.eps, kwargs=opt.kwargs, implementation=opt.implementation,
        allow_imports=cfg.allow_imports,
    )  # fmt: skip
    scheduler = build_schedule(
        optimizer, sched.name, warmup_steps=sched.warmup_steps, total_steps=updates,
        min_lr_ratio=sched.min_lr_ratio, allow_imports=cfg.allow_imports,
    )  # fmt: skip
    guard = NonFiniteGuard("halt" if t.nonfinite == "raise" else "skip")
    out_dir, ckpts = Path(cfg.checkpointing.output_dir), cfg.checkpointing
    manager = CheckpointManager(out_dir / "checkpoints", keep_last_n=ckpts.keep_last_n)
    resolved, adapters = to_container(cfg), lora is not None
    sources = sources or {
        "data.source": cfg.data.source, "tokenizer.path": cfg.tokenizer_dir,
        **{f"data.sources.{i}.source": s.source for i, s in enumerate(getattr(cfg.data, "sources", []))},
    }  # fmt: skip
    step, state = resume_run(
        manager, ckpts.resume, resolved, sources=sources, model=model, optimizer=optimizer,
        scheduler=scheduler, guard=guard, loader=loader, trainable_only=adapters,
        distributed=dp.distributed, extra=dict(extra), extra_keys=extra_keys,
    )  # fmt: skip
    sink = None
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, out_dir / "config.yaml")
        sink = build_loggers(
            cfg.logging.loggers, output_dir=out_dir, jsonl_path=cfg.logging.jsonl_path,
            options=cfg.logging.options, allow_imports=cfg.allow_imports, start_step=step,
        )  # fmt: skip

    def save(at_step: int) -> Path:
        state["guard"] = guard.state_dict()
        return save_training_state(
            manager, at_step, model=model, optimizer=optimizer, scheduler=scheduler,
            data_state=loader.state_dict(), extra=state, config=resolved,
            trainable_only=adapters, distributed=dp.distributed,
        )  # fmt: skip

    sync = getattr(model, "set_requires_gradient_sync", None) if dp.distributed else None
    driver = TrainingDriver(
        trainable, optimizer, scheduler, guard=guard, max_grad_norm=t.max_grad_norm,
        accumulator=GradientAccumulator(
            dp.reduce, grad_average_world_size=dp.size if dp.distributed else 1, device=rt.device
        ),
        cadence=Cadence(
            total_steps, log_every=cfg.logging.log_every_n_steps, eval_every=cfg.eval.every_n_steps,
            save_every=ckpts.save_every_n_steps, eval_before=cfg.eval.before_training,
        ),
        gradient_sync=sync, save=save, sink=sink,
    )  # fmt: skip
    driver.meter.device = rt.device
    return TrainingRun(cfg, rt, dp, ckpt, lora, driver, step, state, sink)


def drive(
    run: TrainingRun,
    step_fn: Callable[[int], StepResult],
    *,
    evaluate: Callable[[int], dict[str, float] | None] | None,
    desc: str,
    postfix: Sequence[str] = ("loss",),
) -> RunResult:
    """Run the driver from the resumed step with a stop-signal handler and a progress bar."""
    driver, cfg = run.driver, run.cfg
    driver.evaluate, driver.postfix = evaluate, tuple(postfix)
    driver.progress = tqdm(
        total=driver.cadence.total_steps, initial=run.step, desc=desc, unit="step",
        dynamic_ncols=True, disable=not (run.rt.is_main and cfg.logging.progress_bar),
    )  # fmt: skip
    stopper = StopSignalHandler().install()
    driver.should_stop = stopper.should_stop
    run.model.train()
    startup = seconds_since_process_start()
    if startup is not None and run.rt.is_main:  # imports and setup: what a user waits for
        logger.info("start-up: %.2f s from process start to the first step", startup)
    try:
        return driver.run(step_fn, run.step)
    finally:
        stopper.uninstall()


def finish(run: TrainingRun, result: RunResult, summary: dict[str, Any]) -> dict[str, Any]:
    """Write the HF / PEFT outputs (unless the run was stopped) and close the loggers."""
    cfg, rt = run.cfg, run.rt
    if result.stopped:
        summary["stopped"] = True
    else:
        summary.update(
            write_final_outputs(
                Path(cfg.checkpointing.output_dir), run.model, run.ckpt,
                Path(cfg.model.checkpoint_dir), method=cfg.training.method, lora=run.lora,
                dtype=rt.dtype, save_adapter=cfg.checkpointing.save_adapter,
                save_merged=cfg.checkpointing.save_merged, is_main=rt.is_main,
                distributed=run.dp.distributed,
            )
        )  # fmt: skip
        if cfg.checkpointing.save_gguf and rt.is_main:
            from tune.checkpoint.gguf import export_gguf

            gguf_dir = Path(cfg.checkpointing.output_dir) / "gguf"
            summary["gguf_files"] = [
                str(export_gguf(summary["model_dir"], gguf_dir / kind / f"model-{kind}.gguf",
                                file_type=kind, overwrite=True))
                for kind in cfg.checkpointing.save_gguf
            ]  # fmt: skip
    if run.sink is not None:
        run.sink.close()
        out_dir = Path(cfg.checkpointing.output_dir)
        if can_plot():  # rank 0, after the last metrics line is written
            curve = plot_loss_curve(metrics_file(out_dir, cfg.logging.jsonl_path),
                                    out_dir / "loss_curve.png", title=cfg.recipe)  # fmt: skip
            if curve is not None:
                summary["loss_curve"] = str(curve)
    return summary
