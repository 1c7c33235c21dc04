"""The frame every training recipe runs in: runtime up, run directory claimed, runtime down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tqdm.contrib.logging import logging_redirect_tqdm

from tune.recipes.common.run_directory import claimed_run_directory
from tune.recipes.common.runtime import Runtime, start_runtime, stop_runtime
from tune.recipes.config.schema import to_container

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

    Returns:
        ``train``'s summary.
    """
    cfg: Any = config
    rt = start_runtime(cfg.device, cfg.model.dtype, cfg.distributed.backend)
    try:
        out_dir = cfg.checkpointing.output_dir
        # Log records go through tqdm.write, so INFO lines never break the progress bar.
        with (
            claimed_run_directory(out_dir, to_container(cfg), is_main=rt.is_main),
            logging_redirect_tqdm(),
        ):
            summary = train(config, rt)
    except BaseException:
        stop_runtime(wait_for_ranks=False)
        raise
    stop_runtime()
    return summary
