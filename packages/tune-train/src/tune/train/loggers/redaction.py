"""Keep secrets (API keys, tokens, passwords) out of logs and saved configs.

Three rules, applied together:

- by name: an entry whose key names a credential (`hf_token`, `wandb.api_key`, `dbPassword`,
  `aws_secret_access_key`, ...) has its value replaced, whatever its type. Tokenizer settings
  (`eos_token`, `pad_token`, ...) are not credentials. Bools are kept (a flag carries no secret),
  and so are numbers under names ending in `per_token` (`flops_per_token`, a metric).
- by value: substrings that look like known credentials are replaced wherever they appear: Hugging
  Face tokens (`hf_` + 30 or more letters/digits), OpenAI/Anthropic-style keys (`sk-...`), GitHub
  tokens (`ghp_...`, `github_pat_...`), Slack (`xoxb-...`) and AWS (`AKIA...`) keys, bearer
  tokens, and 40-hex W&B keys where the key or the text says `wandb` (a bare 40-hex string is more
  often a git commit, which must stay readable).
- by environment: the values of secret environment variables (`HF_TOKEN`, `WANDB_API_KEY`,
  `*_SECRET`, ...) are replaced wherever they appear.

`redact_secrets` applies them to a nested config or metrics object, `redact_text` to a log line
and `redact_message` to an error message. This is tune's one rule: loggers, saved configs, step
directories and CLI errors all use it. The module imports only the standard library (not torch),
so a command line can use it on its error path.
"""

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
# Shell variables whose names only look secret: `PWD` is the working directory, not a password.
_NOT_SECRET_ENV_VARS = frozenset({"PWD", "OLDPWD"})
# Names of credentials: a value of any type under these names is a secret.
_CREDENTIAL_NAME = re.compile(
    r"(^|_)(token|auth_token|access_token|api_?key|secret|secret_key|password|passwd|"
    r"credentials?|private_key)$",
    re.IGNORECASE,
)
_PER_TOKEN = re.compile(r"(^|_)per_token$", re.IGNORECASE)  # a rate: flops_per_token
_SPECIAL_TOKEN_NAME = re.compile(r"^(pad|bos|eos|unk|sep|cls|mask)_token$", re.IGNORECASE)
# Credentials recognisable by their shape, wherever they appear in a string.
_TOKEN_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}"),  # Hugging Face
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic (sk-ant-...)
    re.compile(r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub
    re.compile(r"(?<![A-Za-z0-9])github_pat_[A-Za-z0-9_]{30,}"),
    re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"(?<![A-Za-z0-9])AKIA[0-9A-Z]{16}(?![A-Za-z0-9])"),  # AWS access key id
)
_BEARER = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_HEX40 = re.compile(r"(?<![0-9A-Fa-f])[0-9a-f]{40}(?![0-9A-Fa-f])")
_WANDB_KEY_IN_TEXT = re.compile(r"(?i)(wandb[^\n]{0,40}?)(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])")


def _assignment(sep: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>{sep})(?P<quote>[\"']?)"
        r"(?P<value>[^\s\"',;&}]+)"
    )


_FLAG = re.compile(
    r"(?P<name>--?[A-Za-z][A-Za-z0-9_.-]*)(?P<sep>\s+)(?P<quote>)(?P<value>[^\s-]\S*)"
)
# A log line: `name=value`, `name: value`, `"name": "value"` and `--name value`.
_LINE_ASSIGNMENTS = (_assignment(r"[\"']?\s*[:=]\s*"), _FLAG)
# An error message names its key before a colon (`data.hf_token: unknown key`), so there only
# `name=value`, a quoted `"name": value` (a dict or JSON) and `--name value` are assignments.
_MESSAGE_ASSIGNMENTS = (_assignment(r"[\"']?\s*=\s*|[\"']\s*:\s*"), _FLAG)


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
        value: its value: None, `""` and bools are never secret; a number is under a
            credential's name (`api_key: 12345`, `hf_token: 12345`), not under a rate
            (`flops_per_token`) or another name ending in `key` (`sort_key: 3`).
    """
    if value is None or isinstance(value, bool) or value == "":
        return False
    kind = _name_kind(name)
    if kind == "any":
        return True
    last = name.rsplit(".", 1)[-1].replace("-", "_")
    credential = bool(_CREDENTIAL_NAME.search(last)) and not _SPECIAL_TOKEN_NAME.match(last)
    if isinstance(value, (int, float)):
        # `flops_per_token: 3.1e9` is a metric; a number under `api_key` or `hf_token` is not.
        return credential and not _PER_TOKEN.search(last)
    return credential or kind == "str"


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
        and name not in _NOT_SECRET_ENV_VARS
        and len(value) >= _MIN_SECRET_LENGTH
    }
    # Longest first, so a secret containing another is replaced whole.
    return sorted(values, key=len, reverse=True)


def _redact_string(text: str, secrets: list[str], wandb: bool = False) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    if wandb:
        return _HEX40.sub(REDACTED, text)
    return _WANDB_KEY_IN_TEXT.sub(rf"\g<1>{REDACTED}", text)


def _redact(value: Any, secrets: list[str], wandb: bool = False) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            under_wandb = wandb or "wandb" in str(k).lower()
            out[k] = REDACTED if is_secret_key(str(k), v) else _redact(v, secrets, under_wandb)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, secrets, wandb) for v in value)
    if isinstance(value, str):
        return _redact_string(value, secrets, wandb)
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


def _redact_assignments(
    text: str, environ: Mapping[str, str] | None, patterns: tuple[re.Pattern[str], ...]
) -> str:
    def assignment(match: re.Match[str]) -> str:
        name, value = match["name"].lstrip("-"), match["value"]
        if value == REDACTED or not is_secret_key(name, value):
            return match[0]
        return f"{match['name']}{match['sep']}{match['quote']}{REDACTED}"

    text = _redact_string(text, secret_env_values(environ))
    for pattern in patterns:
        text = pattern.sub(assignment, text)
    return text


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """A log line with secrets replaced by `"***"`.

    Replaces the values of secret-named assignments (`hf_token=...`, `api_key: ...`,
    `"api_key": "..."`, `--hf-token ...`), credential-shaped substrings (see the module
    docstring) and the values of secret environment variables.

    Args:
        text: the line (or lines).
        environ: the environment whose secret values to scrub (default `os.environ`).
    """
    return _redact_assignments(text, environ, _LINE_ASSIGNMENTS)


def redact_message(text: str, environ: Mapping[str, str] | None = None) -> str:
    """An error message with secrets replaced by `"***"`: `redact_text`, except that an unquoted
    `key: message` is not an assignment, so `data.hf_token: unknown key` keeps its words.

    Args:
        text: the message.
        environ: the environment whose secret values to scrub (default `os.environ`).
    """
    return _redact_assignments(text, environ, _MESSAGE_ASSIGNMENTS)
