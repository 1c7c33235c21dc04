"""The grpo recipe's own setup: held-out prompts, sampling settings, rewards, update means."""

from __future__ import annotations

from typing import Any

from torch import nn

from tune.data import PromptAnswerBuilder
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.grpo.config import GRPOConfig
from tune.recipes.grpo.rewards import build_reward
from tune.train.rl import PolicyLossSettings, SamplingSettings

# Settings that change the rollouts a step samples: a checkpoint of another run cannot continue.
GRPO_RESUME_KEYS = ("rollout.prompts_per_step", "rollout.group_size", "data.column_map")


def prompt_builder(cfg: GRPOConfig, tokenizer: Any) -> PromptAnswerBuilder:
    """Prompt rows (chat-templated) and their reference answers, columns renamed per config."""
    return PromptAnswerBuilder(
        tokenizer, cfg.tokenizer.chat_template, columns=cfg.data.column_map or None,
        columns_key="data.column_map",
    )  # fmt: skip


def held_out_prompts(
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


def sampling_settings(
    cfg: GRPOConfig, eos_id: int | None
) -> tuple[SamplingSettings, SamplingSettings]:
    """``(training, held-out)`` sampling settings (they differ in temperature)."""
    roll = cfg.rollout
    stops = tuple(dict.fromkeys([*([eos_id] if eos_id is not None else []), *roll.stop_token_ids]))
    train, held_out = (
        SamplingSettings(
            roll.max_new_tokens,
            temperature=temperature,
            top_p=roll.top_p,
            top_k=roll.top_k,
            stop_tokens=stops,
        )
        for temperature in (roll.temperature, cfg.eval.temperature)
    )
    return train, held_out


def rewards(cfg: GRPOConfig) -> list[Any]:
    """The weighted reward functions of ``rewards:`` (registry names or allowed imports)."""
    return [
        build_reward(r.name, weight=r.weight, options=r.options, allow_imports=cfg.allow_imports)
        for r in cfg.rewards
    ]


def frozen_reference(cfg: GRPOConfig, *, adapters: bool, rt: Any) -> nn.Module | None:
    """The KL reference for full tuning (a frozen copy of the base); None: not needed, or the
    policy with its adapters disabled."""
    if cfg.training.kl_coef <= 0 or adapters:
        return None
    base = load_pretrained(cfg.model.checkpoint_dir, dtype=rt.dtype, device=rt.device)
    return base.model.requires_grad_(False)


def policy_loss(cfg: GRPOConfig) -> PolicyLossSettings:
    """tune.train's clipped policy objective from ``training``."""
    t = cfg.training
    return PolicyLossSettings(
        clip_eps=t.clip_eps, clip_eps_high=t.clip_eps_high, kl_coef=t.kl_coef,
        aggregation=t.loss_aggregation,
    )  # fmt: skip
