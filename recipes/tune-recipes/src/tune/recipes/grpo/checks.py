"""``GRPOConfig.validate``: ranges and relations, before any model or data loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.config import Checks, ConfigError
from tune.recipes.common import section_checks as shared
from tune.recipes.common.availability import check_data_source
from tune.recipes.config.registries import GENERATION_BACKENDS, REWARDS

if TYPE_CHECKING:
    from tune.recipes.grpo.config import GRPOConfig


def _check_model_and_data(cfg: GRPOConfig, c: Checks) -> None:
    shared.check_model(cfg, c)
    d = cfg.data
    if c.require(bool(d.source), "data.source", "must not be empty"):
        check_data_source(c, "data.source", d.source)
    shared.check_column_map(c, "data.column_map", d.column_map, "prompt")
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
    world, tp = c.context.world_size, cfg.distributed.tp_size
    dp = world // tp if tp > 0 and world % tp == 0 else world  # TP peers share their prompts
    if c.positive("rollout.prompts_per_step", r.prompts_per_step):
        c.require(
            r.prompts_per_step % dp == 0,
            "rollout.prompts_per_step",
            f"{r.prompts_per_step} is not divisible by the data-parallel size {dp} (world size "
            f"{world} / distributed.tp_size {tp}; each data-parallel rank samples for an equal "
            "share of the prompts)",
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
    shared.check_lora(cfg, c)
    c.positive("training.max_steps", t.max_steps)
    c.positive("training.updates_per_rollout", t.updates_per_rollout)
    c.positive("training.micro_batch_size", t.micro_batch_size)
    total = t.max_steps * t.updates_per_rollout
    shared.check_optimizer(
        cfg, c, total if total > 0 else None, " = max_steps × updates_per_rollout"
    )
    if c.positive("training.clip_eps", t.clip_eps):
        c.require(t.clip_eps < 1, "training.clip_eps", f"must be < 1, got {t.clip_eps}")
    c.positive("training.clip_eps_high", t.clip_eps_high)
    c.non_negative("training.kl_coef", t.kl_coef)


def _check_outputs(cfg: GRPOConfig, c: Checks) -> None:
    shared.check_checkpointing(cfg, c)
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
    shared.check_logging(cfg, c)
    shared.check_distributed(cfg, c)
    if c.context.world_size > 1 and not cfg.distributed.fsdp:
        c.error(
            "distributed.fsdp", "must be true with several processes (gradients are synced by FSDP)"
        )


CHECKS = (_check_model_and_data, _check_rollout, _check_rewards, _check_training, _check_outputs)
