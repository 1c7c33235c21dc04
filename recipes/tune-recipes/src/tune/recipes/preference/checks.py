"""``PreferenceConfig.validate``: ranges and relations, before any model or data loads.

The model, training and output checks are the shared ones (the same keys mean the same
things); the preference-specific ones follow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.config import Checks
from tune.recipes.common.section_checks import (
    check_checkpoint_dir,
    check_data,
    check_model,
    check_run,
    check_training,
)

if TYPE_CHECKING:
    from tune.recipes.preference.config import PreferenceConfig


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
            check_checkpoint_dir(c, "model.reference_checkpoint_dir", ref_dir)
    if t.method != "full" and loss.needs_reference and t.lora.init == "pissa":
        # PiSSA moves the top singular directions out of the base weight: with the adapters
        # disabled the model is the residual, not the starting policy.
        c.error(
            "training.lora.init",
            f"pissa cannot be used with training.loss.name={loss.name}: the reference is the "
            "model with adapters disabled, which under PiSSA is not the starting model",
        )


def _check_format(cfg: PreferenceConfig, c: Checks) -> None:
    loss, form = cfg.training.loss.name, cfg.data.format
    if loss == "kto":
        c.require(
            form == "unpaired",
            "data.format",
            "training.loss.name=kto trains on unpaired rows (prompt, completion, label): "
            f"set data.format=unpaired, got {form!r}",
        )
    else:
        c.require(
            form == "paired",
            "data.format",
            f"training.loss.name={loss} needs paired rows (prompt, chosen, rejected), "
            f"got data.format={form!r} (unpaired data is for kto)",
        )


CHECKS = (check_model, check_data, _check_format, check_training, _check_loss, check_run)
