"""The resolved config saved and printed with tune-train's secret rule (which imports no torch)."""

from __future__ import annotations

import functools

from tune.config import saving
from tune.train.loggers.redaction import redact_secrets

config_to_yaml = functools.partial(saving.config_to_yaml, redact=redact_secrets)
save_resolved_config = functools.partial(saving.save_resolved_config, redact=redact_secrets)
