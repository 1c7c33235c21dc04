"""Metrics as TensorBoard scalars (needs the optional `tensorboard` package)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tune.train.loggers.protocol import numeric_only, prepare_metrics
from tune.train.loggers.redaction import redact_secrets


class TensorBoardLogger:
    """Writes scalars with `torch.utils.tensorboard.SummaryWriter`; the config as a text entry.

    Args:
        log_dir: directory for the event files.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch.utils.tensorboard imports the tensorboard package
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: "
                "pip install 'tune-train[tensorboard]'"
            ) from err
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Add each numeric metric as a scalar at this step."""
        for name, value in numeric_only(prepare_metrics(metrics)).items():
            self._writer.add_scalar(name, value, global_step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Add the redacted config as a JSON text entry named `config`."""
        text = json.dumps(redact_secrets(dict(config)), indent=2, default=str)
        self._writer.add_text("config", f"```\n{text}\n```", global_step=0)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.flush()
        self._writer.close()
