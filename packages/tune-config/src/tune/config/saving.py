"""The resolved config as YAML, written next to a run's checkpoints, secrets hidden by your rule."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tune.config.schema import to_container


def config_to_yaml(
    config: Any,
    *,
    redact: Callable[[Any], Any] | None = None,
    drop_keys: Sequence[str] = ("allow_imports",),
) -> str:
    """YAML of a config (dataclass instance or plain tree), in declaration order.

    Args:
        config: a config dataclass instance or a plain tree.
        redact: tree -> tree with credentials hidden (e.g. tune-train's ``redact_secrets``).
        drop_keys: top-level keys left out. ``allow_imports`` comes from the command line of the
            run that wrote the file, and a config that carries it is refused when loaded again.
    """
    tree = to_container(config)
    if redact is not None:
        tree = redact(tree)
    if isinstance(tree, dict):
        for key in drop_keys:
            tree.pop(key, None)
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)


def save_resolved_config(
    config: Any,
    path: str | os.PathLike[str],
    *,
    redact: Callable[[Any], Any] | None = None,
    drop_keys: Sequence[str] = ("allow_imports",),
) -> Path:
    """Write ``config_to_yaml(config)`` atomically (temp file in the same folder, then rename).

    Args:
        config: a config dataclass instance or a plain tree.
        path: the file to write (parents are created).
        redact: as in ``config_to_yaml``.
        drop_keys: as in ``config_to_yaml``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(config_to_yaml(config, redact=redact, drop_keys=drop_keys))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
