"""Metric loggers behind one protocol; secrets are redacted before anything is written.

Names are imported on first use: ``tune.train.loggers.redaction`` does not import torch.
"""

from typing import TYPE_CHECKING

from tune.train._lazy import lazy_exports

_EXPORTS = {
    "for_run": ("loggers_for_run",),
    "jsonl_logger": ("JsonlLogger", "drop_steps_from", "read_jsonl_metrics"),
    "loss_curve": ("can_plot", "plot_loss_curve"),
    "mlflow_logger": ("MLflowLogger",),
    "protocol": ("MetricLogger", "MultiLogger"),
    "redaction": (
        "REDACTED",
        "is_secret_key",
        "redact_message",
        "redact_secrets",
        "redact_text",
        "secret_env_values",
    ),
    "stdout_logger": ("StdoutLogger",),
    "tensorboard_logger": ("TensorBoardLogger",),
    "wandb_logger": ("WandbLogger",),
}

if TYPE_CHECKING:
    from tune.train.loggers.for_run import loggers_for_run
    from tune.train.loggers.jsonl_logger import JsonlLogger, drop_steps_from, read_jsonl_metrics
    from tune.train.loggers.loss_curve import can_plot, plot_loss_curve
    from tune.train.loggers.mlflow_logger import MLflowLogger
    from tune.train.loggers.protocol import MetricLogger, MultiLogger
    from tune.train.loggers.redaction import (
        REDACTED,
        is_secret_key,
        redact_message,
        redact_secrets,
        redact_text,
        secret_env_values,
    )
    from tune.train.loggers.stdout_logger import StdoutLogger
    from tune.train.loggers.tensorboard_logger import TensorBoardLogger
    from tune.train.loggers.wandb_logger import WandbLogger
else:
    __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

__all__ = [
    "REDACTED",
    "JsonlLogger",
    "MLflowLogger",
    "MetricLogger",
    "MultiLogger",
    "StdoutLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "can_plot",
    "drop_steps_from",
    "is_secret_key",
    "loggers_for_run",
    "plot_loss_curve",
    "read_jsonl_metrics",
    "redact_message",
    "redact_secrets",
    "redact_text",
    "secret_env_values",
]
