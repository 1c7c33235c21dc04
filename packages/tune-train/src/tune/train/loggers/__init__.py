"""Metric loggers behind one protocol; secrets are redacted before anything is written."""

from tune.train.loggers.jsonl_logger import JsonlLogger, drop_steps_from
from tune.train.loggers.mlflow_logger import MLflowLogger
from tune.train.loggers.protocol import MetricLogger, MultiLogger
from tune.train.loggers.redaction import (
    REDACTED,
    is_secret_key,
    redact_secrets,
    redact_text,
    secret_env_values,
)
from tune.train.loggers.stdout_logger import StdoutLogger
from tune.train.loggers.tensorboard_logger import TensorBoardLogger
from tune.train.loggers.wandb_logger import WandbLogger

__all__ = [
    "REDACTED",
    "JsonlLogger",
    "MLflowLogger",
    "MetricLogger",
    "MultiLogger",
    "StdoutLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "drop_steps_from",
    "is_secret_key",
    "redact_secrets",
    "redact_text",
    "secret_env_values",
]
