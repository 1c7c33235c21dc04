"""Secrets out of printed and saved configs."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tune.recipes.config.schema import to_container

REDACTED = "***REDACTED***"
_SECRET_NAME = re.compile(
    r"(^|[_-])(token|auth_token|access_token|api_?key|secret|secret_key|password|passwd|"
    r"credentials?|private_key)$",
    re.IGNORECASE,
)
# Special tokens of tokenizers are vocabulary, not credentials.
_NOT_SECRET = re.compile(r"^(pad|bos|eos|unk|sep|cls|mask)_token$", re.IGNORECASE)
# Credentials recognisable by their shape: Hugging Face, OpenAI-style, GitHub, Slack, AWS keys.
_SECRET_VALUE = re.compile(
    r"(hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})"
)


def looks_secret(text: str) -> bool:
    """Whether ``text`` contains something shaped like a credential (``hf_...``, ``sk-...``)."""
    return bool(_SECRET_VALUE.search(text))


def is_secret_key(name: str) -> bool:
    """Whether a key names a credential (``hf_token``, ``api_key``, ``wandb_secret``...)."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.match(name)


def redact_text(text: str) -> str:
    """``text`` with every credential-shaped substring (``hf_...``, ``sk-...``) replaced."""
    return _SECRET_VALUE.sub(REDACTED, text)


def redact(tree: Any) -> Any:
    """A copy of a plain config tree with the values of secret keys replaced."""
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            secret = is_secret_key(str(k)) and v not in (None, "")
            out[k] = REDACTED if secret else redact(v)
        return out
    if isinstance(tree, list | tuple):
        return [redact(v) for v in tree]
    if isinstance(tree, str) and looks_secret(tree):
        return REDACTED
    return tree


def config_to_yaml(config: Any) -> str:
    """YAML of a config (dataclass instance or plain tree), secrets redacted.

    ``allow_imports`` is left out: it comes from the command line of the run that wrote the file,
    and a config that carries it would be refused when loaded again.
    """
    tree = redact(to_container(config))
    if isinstance(tree, dict):
        tree.pop("allow_imports", None)
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)


def save_resolved_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML, secrets redacted, atomically (temp file + rename).

    Args:
        config: a config dataclass instance or a plain tree.
        path: the file to write (parents are created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(config_to_yaml(config))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
