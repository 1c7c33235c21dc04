"""Keep secrets (API keys, tokens, passwords) out of logs and saved configs."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# A word anywhere in the name marks a secret, whatever the value's type (except bools and None).
_SECRET_WORDS = frozenset(
    {"secret", "secrets", "password", "passwd", "pwd", "apikey", "credential", "credentials"}
)
# A name ending in one of these words marks a secret when its value is a string.
_SECRET_LAST_WORDS = frozenset({"token", "key"})
# `eos_token: "</s>"` and friends are tokenizer settings, not secrets.
_NOT_SECRET_BEFORE_TOKEN = frozenset(
    {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "start", "end", "stop", "chat"}
)
# Environment variables whose values are secrets even if their names do not say so clearly.
KNOWN_SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "OPENAI_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
)
_MIN_SECRET_LENGTH = 6


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _name_kind(name: str) -> str | None:
    """'any' if the name marks a secret of any type, 'str' if only string values, else None."""
    words = _words(name)
    if not words:
        return None
    if any(w in _SECRET_WORDS for w in words):
        return "any"
    if words[-1] in _SECRET_LAST_WORDS:
        if words[-1] == "token" and len(words) > 1 and words[-2] in _NOT_SECRET_BEFORE_TOKEN:
            return None
        return "str"
    return None


def is_secret_key(name: str, value: Any = "") -> bool:
    """Whether a config/metric entry named `name` with this value must not be written.

    Args:
        name: the key, e.g. `hf_token`, `wandb.api_key`, `dbPassword`.
        value: its value (names ending in token/key are secret only for string values).
    """
    if value is None or isinstance(value, bool):
        return False
    kind = _name_kind(name)
    return kind == "any" or (kind == "str" and isinstance(value, (str, bytes)))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (HF_TOKEN, WANDB_API_KEY, *_SECRET, ...).

    Args:
        environ: the environment to read (default `os.environ`).
    """
    env = os.environ if environ is None else environ
    values = {
        value
        for name, value in env.items()
        if (name in KNOWN_SECRET_ENV_VARS or _name_kind(name) is not None)
        and len(value) >= _MIN_SECRET_LENGTH
    }
    # Longest first, so a secret containing another is replaced whole.
    return sorted(values, key=len, reverse=True)


def _redact_string(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(str(k), v) else _redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, secrets) for v in value)
    if isinstance(value, str):
        return _redact_string(value, secrets)
    return value


def redact_secrets(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Copy of a (nested) config or metrics object with secrets replaced by `"***"`.

    Entries whose key names a secret are replaced, and any string containing the value of a
    secret environment variable has that value replaced. Use it before writing a config to disk.

    Args:
        obj: dicts, lists, tuples and scalars, nested.
        environ: the environment whose secret values to scrub (default `os.environ`).
    """
    return _redact(obj, secret_env_values(environ))
