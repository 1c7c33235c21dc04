"""Which settings may change between a checkpoint and the run that resumes from it.

A config is a nested mapping of JSON-able values, compared by dotted key
(``"training.optimizer.lr"``); a key in a ``ResumePolicy`` covers itself and every key under it.
Invariant keys never change (the data stream or the weights would differ), free keys change
without a word, and any other change must be listed in the resuming config under the policy's
``override_key``::

    policy = ResumePolicy(invariant_keys=("data.path", "seed"), free_keys=("logging",),
                          override_key="resume_overrides")
    check_resume_compatible(saved_config, config, step_dir, policy)  # raises, naming each key
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.checkpoint.errors import ResumeMismatchError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePolicy:
    """Which config keys may differ between a checkpoint and the run that resumes from it.

    Args:
        invariant_keys: dotted keys that may never change (the data stream or the weights would
            differ): dataset, tokenizer, seeds, batch size, ...
        free_keys: keys that may change without a word: logging, evaluation, save cadence,
            world size, never the training trajectory.
        override_key: the key of the resuming run's config that lists (as dotted keys or
            sections) the other changes to accept, e.g. ``"resume_overrides"``; it is free
            itself. None refuses every other change.
        resume_key: how the ``resume`` argument is named in error messages.
        start_over: what a user can do instead, ending every refusal.
    """

    invariant_keys: tuple[str, ...] = ()
    free_keys: tuple[str, ...] = ()
    override_key: str | None = None
    resume_key: str = "resume"
    start_over: str = "resume from another checkpoint, or start over in another directory"

    def __post_init__(self) -> None:
        for name in ("invariant_keys", "free_keys"):
            keys = getattr(self, name)
            if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
                raise ValueError(
                    f"ResumePolicy.{name} must be a sequence of non-empty dotted keys, got {keys!r}"
                )
            object.__setattr__(self, name, tuple(keys))


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every non-mapping value of a config tree."""
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for name, value in tree.items():
        out.update(_leaves(value, f"{prefix}{name}."))
    return out


def _covered(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def changed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], free_keys: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> ``(saved, current)`` of every setting that differs, ``free_keys`` aside.

    Keys absent from ``saved`` (added to the config since it was written) are skipped.
    """
    before, now = _leaves(saved), _leaves(current)
    return {
        key: (before[key], now.get(key))
        for key in sorted(before)
        if before[key] != now.get(key) and not _covered(key, free_keys)
    }


def check_resume_compatible(
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    step_dir: str | Path,
    policy: ResumePolicy,
) -> dict[str, tuple[Any, Any]]:
    """The settings changed since ``step_dir`` was written, after refusing forbidden changes.

    Args:
        saved: the config stored with the step (``TrainingState.config``).
        current: this run's config.
        step_dir: the step directory (named in errors).
        policy: invariant, free and override keys.

    Returns:
        dotted key -> ``(saved, current)`` of each accepted change (listed under
        ``policy.override_key``), each logged as a warning.

    Raises:
        ResumeMismatchError: no saved config, an invariant key changed, or another key changed
            without being listed; naming each key with its saved and current values.
    """
    if saved is None or not isinstance(saved, Mapping):
        raise ResumeMismatchError(
            f"{step_dir}: no saved config (a mapping); cannot check it belongs to this run"
        )
    invariant = policy.invariant_keys
    changed = [
        f"{key}: saved {_lookup(saved, key)!r}, now {_lookup(current, key)!r}"
        for key in invariant
        if _lookup(saved, key) != _lookup(current, key)
    ]
    if changed:
        raise ResumeMismatchError(
            f"{step_dir} was written by a run with other settings ({'; '.join(changed)}); "
            f"{policy.start_over}"
        )
    override = policy.override_key
    free = (*policy.free_keys, *([override] if override else []))
    allowed = list((_lookup(current, override) if override else None) or [])
    changes = {
        k: v
        for k, v in changed_settings(saved, current, free).items()
        if not _covered(k, invariant)
    }
    refused = {k: v for k, v in changes.items() if not _covered(k, allowed)}
    if refused:
        listed = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        remedy = (
            f"To apply the new values, pass {override}=[{','.join(refused)}]; or restore them, or "
            if override
            else "Restore them, or "
        )
        raise ResumeMismatchError(
            f"{step_dir} was saved with other settings ({listed}). Resuming would silently keep "
            f"the saved ones. {remedy}{policy.start_over}"
        )
    for key, (before, after) in changes.items():
        logger.warning("resume: %s changed from %r to %r (listed in %s)", key, before, after,
                       override)  # fmt: skip
    return changes
