"""The preference recipe's own setup: its objective, its loaders (paired or unpaired) and reference."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from tune.data import PreferenceBuilder, StreamingLoader, UnpairedBuilder
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.preference.config import PreferenceConfig
from tune.train.steps.preference import PreferenceObjective

logger = logging.getLogger(__name__)

# Beyond the keys every recipe checks: a step written for another objective or reference model
# continues a different optimisation.
PREFERENCE_RESUME_KEYS = ("training.loss", "model.reference_checkpoint_dir")


def objective(cfg: PreferenceConfig) -> PreferenceObjective:
    """tune.train's preference objective from ``training.loss``."""
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


def paired_builder(cfg: PreferenceConfig, tokenizer: Any) -> PreferenceBuilder:
    """The builder of chosen/rejected rows (its ``validate`` checks rows before the split)."""
    template = _chat_template(cfg.tokenizer.chat_template)
    return PreferenceBuilder(
        tokenizer, template, cfg.data.column_map or None, columns_key="data.column_map"
    )


def preference_loader(
    cfg: PreferenceConfig, dataset: Any, tokenizer: Any, *, rank: int, world: int, train: bool
) -> StreamingLoader:
    """Batches of ``2 x micro_batch_size`` rows (chosen, then rejected; unpaired: examples)."""
    d = cfg.data
    kwargs: dict[str, Any] = {
        "batch_size": cfg.training.micro_batch_size, "max_seq_len": d.max_seq_len,
        "truncation": d.truncation, "seed": d.seed, "shuffle": d.shuffle and train,
        "epochs": None if train else 1, "rank": rank, "world_size": world, "drop_last": train,
    }  # fmt: skip
    if d.format == "unpaired":
        template = _chat_template(cfg.tokenizer.chat_template)
        builder = UnpairedBuilder(
            tokenizer, template, dataset, cfg.data.column_map or None, columns_key="data.column_map"
        )
        return StreamingLoader(dataset, builder, **kwargs)
    return StreamingLoader(dataset, paired_builder(cfg, tokenizer), **kwargs)


def frozen_reference(cfg: PreferenceConfig, *, adapters: bool, rt: Any) -> nn.Module | None:
    """A frozen reference model for full tuning; None: the policy with adapters disabled."""
    if not objective(cfg).needs_reference or adapters:
        return None
    ref_dir = cfg.model.reference_checkpoint_dir or cfg.model.checkpoint_dir
    reference = load_pretrained(
        ref_dir, dtype=rt.dtype, device=rt.device, implementation=cfg.model.implementation
    ).model
    reference.requires_grad_(False)
    logger.info("reference: a frozen model loaded from %s", ref_dir)
    return reference.eval()
