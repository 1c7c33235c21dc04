"""Metrics to Weights & Biases (needs the optional `wandb` package)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tune.train.loggers.protocol import prepare_metrics
from tune.train.loggers.redaction import redact_secrets


class WandbLogger:
    """Starts a W&B run and logs metrics and the redacted config to it.

    Args:
        project: W&B project.
        name: run name.
        mode: `"online"`, `"offline"` (nothing leaves the machine) or `"disabled"`.
        dir: directory for W&B's local files.
        config: run config (redacted before it is sent).
        **init_kwargs: further `wandb.init` arguments.
    """

    def __init__(
        self,
        project: str,
        *,
        name: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        config: Mapping[str, Any] | None = None,
        **init_kwargs: Any,
    ) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "WandbLogger needs the wandb package: pip install 'tune-train[wandb]'"
            ) from err
        self._run = wandb.init(
            project=project,
            name=name,
            mode=mode,
            dir=dir,
            config=redact_secrets(dict(config)) if config is not None else None,
            **init_kwargs,
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log metrics at this step."""
        self._run.log(prepare_metrics(metrics), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Merge the redacted config into the run's config."""
        self._run.config.update(redact_secrets(dict(config)), allow_val_change=True)

    def close(self) -> None:
        """Finish the run."""
        self._run.finish()
