"""``PreferenceConfig.validate``: ranges and relations, before any model or data loads.

The model, training and output checks are the sft recipe's (the same keys mean the same
things); the preference-specific ones follow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.recipes.common.section_checks import (
    check_model_section,
    check_outputs_section,
    check_training_section,
    looks_local,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import Checks, ValidationContext

if TYPE_CHECKING:
    from tune.recipes.preference.config import PreferenceConfig


def check_data_section(cfg: PreferenceConfig, c: Checks) -> None:
    d = cfg.data
    if c.require(bool(d.source), "data.source", "must not be empty") and looks_local(d.source):
        c.path_exists("data.source", d.source, "any")
    c.positive("data.max_seq_len", d.max_seq_len)
    c.in_range("data.validation_fraction", d.validation_fraction, 0.0, 1.0)
    if d.validation_split is not None and d.validation_fraction > 0:
        c.error(
            "data.validation_fraction",
            "set either data.validation_split or data.validation_fraction, not both",
        )
    loss = cfg.training.loss.name
    if loss == "kto":
        c.require(
            d.format == "unpaired",
            "data.format",
            "training.loss.name=kto trains on unpaired rows (prompt, completion, label): "
            f"set data.format=unpaired, got {d.format!r}",
        )
    else:
        c.require(
            d.format == "paired",
            "data.format",
            f"training.loss.name={loss} needs paired rows (prompt, chosen, rejected), "
            f"got data.format={d.format!r} (unpaired data is for kto)",
        )


def _check_loss(cfg: PreferenceConfig, c: Checks) -> None:
    loss, t = cfg.training.loss, cfg.training
    c.positive("training.loss.beta", loss.beta)
    if not 0.0 <= loss.label_smoothing < 0.5:
        c.error("training.loss.label_smoothing", f"must be in [0, 0.5), got {loss.label_smoothing}")
    c.positive("training.loss.tau", loss.tau)
    c.positive("training.loss.simpo_beta", loss.simpo_beta)
    c.non_negative("training.loss.simpo_gamma", loss.simpo_gamma)
    c.non_negative("training.loss.orpo_lambda", loss.orpo_lambda)
    c.non_negative("training.loss.desirable_weight", loss.desirable_weight)
    c.non_negative("training.loss.undesirable_weight", loss.undesirable_weight)
    ref_dir = cfg.model.reference_checkpoint_dir
    if ref_dir is not None:
        if t.method != "full":
            c.error(
                "model.reference_checkpoint_dir",
                f"only for training.method=full: with {t.method!r} the reference is the policy "
                "with its adapters disabled (no copy); remove the key",
            )
        elif not loss.needs_reference:
            c.warn(
                "model.reference_checkpoint_dir",
                f"training.loss.name={loss.name} uses no reference model; the key is ignored",
            )
        else:
            c.path_exists("model.reference_checkpoint_dir", ref_dir, "dir")
    if t.method != "full" and loss.needs_reference and t.lora.init == "pissa":
        # PiSSA moves the top singular directions out of the base weight: with the adapters
        # disabled the model is the residual, not the starting policy.
        c.error(
            "training.lora.init",
            f"pissa cannot be used with training.loss.name={loss.name}: the reference is the "
            "model with adapters disabled, which under PiSSA is not the starting model",
        )


def _check_parallel(cfg: PreferenceConfig, c: Checks) -> None:
    dist = cfg.distributed
    c.require(
        dist.tp_size == 1,
        "distributed.tp_size",
        f"the preference recipe shards with FSDP only; set 1, got {dist.tp_size}",
    )
    if dist.cpu_offload and not dist.fsdp:
        c.error("distributed.cpu_offload", "needs distributed.fsdp=true")


def check_preference_config(cfg: PreferenceConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of a preference config (errors and warnings)."""
    checks = Checks(context)
    for step in (check_model_section, check_data_section, check_training_section, _check_loss, check_outputs_section,
                 _check_parallel):  # fmt: skip
        step(cfg, checks)  # type: ignore[arg-type]
    return checks.issues
