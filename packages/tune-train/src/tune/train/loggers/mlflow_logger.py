"""Metrics to MLflow (needs the optional `mlflow` package)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tune.train.loggers.protocol import numeric_only, prepare_metrics
from tune.train.loggers.redaction import redact_secrets

# MLflow rejects longer parameter values in some versions; keep within the smallest limit.
_MAX_PARAM_LENGTH = 500


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as `{"a.b.c": "value"}` strings (MLflow params are flat strings).

    Args:
        config: nested mapping.
        prefix: key prefix for recursion.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_LENGTH]
    return flat


class MLflowLogger:
    """Starts an MLflow run; numeric metrics via `log_metrics`, the redacted config as params.

    Args:
        experiment_name: experiment to log into (created if missing); None for the default.
        run_name: run name.
        tracking_uri: e.g. `file:/path/mlruns`; None uses MLflow's default / environment.
        tags: run tags.
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        *,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        try:
            import mlflow
        except ImportError as err:
            raise ImportError(
                "MLflowLogger needs the mlflow package: pip install 'tune-train[mlflow]'"
            ) from err
        self._mlflow = mlflow
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if experiment_name is not None:
            mlflow.set_experiment(experiment_name)
        self._run = mlflow.start_run(
            run_name=run_name, tags=dict(tags) if tags is not None else None
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log numeric metrics at this step."""
        self._mlflow.log_metrics(numeric_only(prepare_metrics(metrics)), step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log the redacted, flattened config as run parameters."""
        self._mlflow.log_params(flatten_config(redact_secrets(dict(config))))

    def close(self) -> None:
        """End the run."""
        self._mlflow.end_run()
