"""``GRPOConfig.validate``: ranges and relations, before any model or data loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tune.recipes.common.lora_settings import lora_settings_problem
from tune.recipes.common.reward_registry import REWARDS
from tune.recipes.common.rollout_backend import GENERATION_BACKENDS
from tune.recipes.config.errors import ConfigError, Issue
from tune.recipes.config.validation import Checks, ValidationContext

if TYPE_CHECKING:
    from tune.recipes.grpo.config import GRPOConfig

_LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def _check_model_and_data(cfg: GRPOConfig, c: Checks) -> None:
    ckpt = cfg.model.checkpoint_dir
    named = c.require(bool(ckpt), "model.checkpoint_dir", "must name a checkpoint directory")
    if named and c.path_exists("model.checkpoint_dir", ckpt, "dir"):
        c.require(
            (Path(ckpt).expanduser() / "config.json").is_file(),
            "model.checkpoint_dir",
            f"{ckpt} has no config.json (expected an HF checkpoint directory)",
        )
    if cfg.tokenizer.path is not None:
        c.path_exists("tokenizer.path", cfg.tokenizer.path, "dir")
    d = cfg.data
    if c.require(bool(d.source), "data.source", "must not be empty"):
        local = d.source.startswith(("/", "./", "../", "~")) or d.source.endswith(
            _LOCAL_DATA_SUFFIXES
        )
        if local:
            c.path_exists("data.source", d.source, "any")
    c.path_exists("data.validation_source", d.validation_source, "file")
    c.in_range("data.validation_fraction", d.validation_fraction, 0.0, 1.0)
    if d.validation_source is not None and d.validation_fraction > 0:
        c.error(
            "data.validation_fraction",
            "set either data.validation_source or data.validation_fraction, not both",
        )
    c.positive("data.max_prompt_len", d.max_prompt_len)


def _check_rollout(cfg: GRPOConfig, c: Checks) -> None:
    r = cfg.rollout
    c.positive("rollout.max_new_tokens", r.max_new_tokens)
    c.positive("rollout.temperature", r.temperature)
    if r.top_p is not None:
        c.require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    c.positive("rollout.top_k", r.top_k)
    if c.positive("rollout.group_size", r.group_size):
        c.require(
            r.group_size >= 2,
            "rollout.group_size",
            f"must be >= 2 (advantages compare completions of one prompt), got {r.group_size}",
        )
    world = c.context.world_size
    if c.positive("rollout.prompts_per_step", r.prompts_per_step):
        c.require(
            r.prompts_per_step % world == 0,
            "rollout.prompts_per_step",
            f"{r.prompts_per_step} is not divisible by the world size {world} (each rank "
            "samples for an equal share of the prompts)",
        )
    _check_name(c, "rollout.backend", r.backend, GENERATION_BACKENDS, cfg.allow_imports)


def _check_name(c: Checks, key: str, name: str, registry, allow_imports) -> None:
    try:
        registry.check(name, key, allow_imports)
    except ConfigError as err:
        c.error(key, err.message)


def _check_rewards(cfg: GRPOConfig, c: Checks) -> None:
    if not c.require(bool(cfg.rewards), "rewards", "must list at least one reward function"):
        return
    for i, reward in enumerate(cfg.rewards):
        _check_name(c, f"rewards.{i}.name", reward.name, REWARDS, cfg.allow_imports)
    if all(r.weight == 0 for r in cfg.rewards):
        c.error("rewards", "every reward weight is 0: the total reward would be constant")


def _check_training(cfg: GRPOConfig, c: Checks) -> None:
    t = cfg.training
    if t.method != "full":
        c.positive("training.lora.r", t.lora.r)
        c.positive("training.lora.alpha", t.lora.alpha)
        c.in_range("training.lora.dropout", t.lora.dropout, 0.0, 1.0)
        if not c.errors and (problem := lora_settings_problem(t.method, t.lora)):
            c.error(f"training.lora.{problem[0]}", problem[1])
        c.require(
            bool(t.lora.targets) and all(t.lora.targets),
            "training.lora.targets",
            f"must list at least one module-name pattern for method {t.method!r}",
        )
    c.positive("training.max_steps", t.max_steps)
    c.positive("training.updates_per_rollout", t.updates_per_rollout)
    c.positive("training.micro_batch_size", t.micro_batch_size)
    c.positive("training.optimizer.lr", t.optimizer.lr)
    c.non_negative("training.optimizer.weight_decay", t.optimizer.weight_decay)
    if c.require(len(t.optimizer.betas) == 2, "training.optimizer.betas", "must be [beta1, beta2]"):
        for i, beta in enumerate(t.optimizer.betas):
            c.in_range(f"training.optimizer.betas.{i}", beta, 0.0, 1.0)
    warmup = t.lr_schedule.warmup_steps
    total = t.max_steps * t.updates_per_rollout
    if c.non_negative("training.lr_schedule.warmup_steps", warmup) and total > 0:
        c.require(
            warmup < total,
            "training.lr_schedule.warmup_steps",
            f"must be < the total optimizer steps ({total} = max_steps × updates_per_rollout), "
            f"got {warmup}",
        )
    c.in_range("training.lr_schedule.min_lr_ratio", t.lr_schedule.min_lr_ratio, 0.0, 1.0 + 1e-12)
    if c.positive("training.clip_eps", t.clip_eps):
        c.require(t.clip_eps < 1, "training.clip_eps", f"must be < 1, got {t.clip_eps}")
    c.positive("training.clip_eps_high", t.clip_eps_high)
    c.non_negative("training.kl_coef", t.kl_coef)
    c.positive("training.max_grad_norm", t.max_grad_norm)


def _check_outputs(cfg: GRPOConfig, c: Checks) -> None:
    ck = cfg.checkpointing
    c.require(bool(ck.output_dir), "checkpointing.output_dir", "must not be empty")
    c.positive("checkpointing.save_every_n_steps", ck.save_every_n_steps)
    c.positive("checkpointing.keep_last_n", ck.keep_last_n)
    if ck.resume not in ("auto", "never"):
        c.path_exists("checkpointing.resume", ck.resume, "dir")
    e = cfg.eval
    c.positive("eval.every_n_steps", e.every_n_steps)
    c.positive("eval.max_prompts", e.max_prompts)
    c.positive("eval.batch_size", e.batch_size)
    c.non_negative("eval.temperature", e.temperature)
    held_out = cfg.data.validation_source is not None or cfg.data.validation_fraction > 0
    if e.every_n_steps is not None and not held_out:
        c.error(
            "eval.every_n_steps",
            "needs held-out prompts: set data.validation_fraction or data.validation_source",
        )
    c.positive("logging.log_every_n_steps", cfg.logging.log_every_n_steps)
    if cfg.distributed.tp_size != 1:
        c.error("distributed.tp_size", f"must be 1 for grpo, got {cfg.distributed.tp_size}")
    if c.context.world_size > 1 and not cfg.distributed.fsdp:
        c.error(
            "distributed.fsdp", "must be true with several processes (gradients are synced by FSDP)"
        )


def check_grpo_config(cfg: GRPOConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of a GRPO config (errors and warnings)."""
    checks = Checks(context)
    for step in (
        _check_model_and_data,
        _check_rollout,
        _check_rewards,
        _check_training,
        _check_outputs,
    ):
        step(cfg, checks)
    return checks.issues
