"""The frames recipes run in: a training run (process group, run directory) or one process."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tqdm.contrib.logging import logging_redirect_tqdm

from tune.checkpoint import claim_run_directory
from tune.config import ValidationContext, to_container, validate_config
from tune.dist import destroy_distributed, read_environment
from tune.recipes.common.run_directory import model_inputs
from tune.recipes.common.runtime import Runtime, start_runtime

ConfigT = TypeVar("ConfigT")


def run_training(
    config: ConfigT, train: Callable[[ConfigT, Runtime], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``train(config, runtime)`` with the process group up and the output directory held.

    The output directory is checked against the config's inputs and locked (rank 0) before
    ``train`` writes anything. On an error the process group is torn down without a barrier:
    the other ranks may be waiting inside a training collective.

    Args:
        config: a recipe config with ``device``, ``model.dtype``, ``distributed.backend`` and
            ``checkpointing.output_dir``.
        train: the recipe's body.
    """
    cfg: Any = config
    rt = start_runtime(cfg.device, cfg.model.dtype, cfg.distributed.backend)
    try:
        out_dir, inputs = cfg.checkpointing.output_dir, dict(model_inputs(to_container(cfg)))
        claim = claim_run_directory(
            out_dir, inputs, command=sys.argv, output_name="checkpointing.output_dir"
        )
        # Log records go through tqdm.write, so INFO lines never break the progress bar.
        with claim, logging_redirect_tqdm():
            summary = train(config, rt)
    except BaseException:
        destroy_distributed(wait=False)
        raise
    destroy_distributed()
    return summary


def run_in_one_process(
    recipe: str, config: ConfigT, body: Callable[[ConfigT, Runtime], dict[str, Any]]
) -> dict[str, Any]:
    """Validate ``config``, then run ``body(config, runtime)`` in one process (refused under torchrun).

    Args:
        recipe: the recipe's name, for the message.
        config: a recipe config with ``device`` and ``model.dtype``.
        body: the recipe's body.
    """
    validate_config(config, ValidationContext(world_size=1))
    if read_environment().is_distributed:
        raise RuntimeError(f"the {recipe} recipe runs in one process; launch it without torchrun")
    cfg: Any = config
    return body(config, start_runtime(cfg.device, cfg.model.dtype))
