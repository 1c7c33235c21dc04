"""Selecting modules by name: plain names, globs and `re:` regexes, with helpful errors."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence

_GLOB_CHARS = frozenset("*?[")
REGEX_PREFIX = "re:"


def _suffixes(fqn: str) -> list[str]:
    parts = fqn.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def name_matches(pattern: str, fqn: str) -> bool:
    """Whether module name `fqn` matches `pattern`.

    `"re:<regex>"` must fully match `fqn`; a glob (`*`, `?`, `[`) must match `fqn` or one of its
    dot-suffixes (`"mlp.*"` matches `layers.0.mlp.up_proj`); a plain name must equal `fqn` or a
    dot-suffix of it (`"q_proj"` matches `layers.0.attn.q_proj`, not `layers.0.attn.xq_proj`).

    Args:
        pattern: The pattern.
        fqn: A dotted module name.
    """
    if pattern.startswith(REGEX_PREFIX):
        return re.fullmatch(pattern[len(REGEX_PREFIX) :], fqn) is not None
    if _GLOB_CHARS.intersection(pattern):
        return any(fnmatch.fnmatchcase(s, pattern) for s in _suffixes(fqn))
    return fqn == pattern or fqn.endswith("." + pattern)


def validate_pattern(pattern: str, where: str) -> None:
    """Raise if a `re:` pattern does not compile.

    Args:
        pattern: The pattern.
        where: What it came from, for the message (e.g. `"LoraConfig.targets"`).
    """
    if pattern.startswith(REGEX_PREFIX):
        try:
            re.compile(pattern[len(REGEX_PREFIX) :])
        except re.error as err:
            raise ValueError(f"{where}: invalid regex in {pattern!r}: {err}") from err


def closest_names(pattern: str, names: Iterable[str], limit: int = 5) -> list[str]:
    """Module names (or their leaf names) closest to `pattern`, for error messages.

    Args:
        pattern: The pattern that matched nothing.
        names: Candidate module names.
        limit: How many to return at most.
    """
    names = list(names)
    probe = pattern[len(REGEX_PREFIX) :] if pattern.startswith(REGEX_PREFIX) else pattern
    candidates = sorted(set(names) | {s for n in names for s in _suffixes(n)[1:]})
    return difflib.get_close_matches(probe, candidates, n=limit, cutoff=0.3)


def select_names(
    names: Sequence[str], patterns: Sequence[str], *, what: str, must_match: bool = True
) -> set[str]:
    """Names matching any of `patterns`; a pattern matching none raises, listing close names.

    Args:
        names: Candidate module names.
        patterns: Patterns (see `name_matches`).
        what: What the patterns are, for the message (e.g. `"LoraConfig.targets"`).
        must_match: Raise when a pattern matches none of `names`.
    """
    selected: set[str] = set()
    for pattern in patterns:
        validate_pattern(pattern, what)
        hits = {n for n in names if name_matches(pattern, n)}
        if not hits and must_match:
            close = closest_names(pattern, names)
            hint = f"closest names: {close}" if close else f"candidates: {sorted(names)[:10]}"
            raise ValueError(f"{what}: pattern {pattern!r} matches no nn.Linear module; {hint}")
        selected |= hits
    return selected
