"""Fingerprints (size + sha256) of the local files a run reads, kept with its checkpoints.

Resume compares config values, but a data row edited in place or a ``tokenizer.json`` replaced at
the same path keeps every config value: the continued run would draw other samples or token ids.
The fingerprints taken at the start of a run are saved in each checkpoint's ``extra`` and
compared before resuming.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

Fingerprints = dict[str, dict[str, dict[str, int | str]]]  # config key -> file -> {size, sha256}

# Files of a tokenizer directory that change token ids or the chat template.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
_CHUNK = 1 << 20
# Weight files above this size are fingerprinted by sampling: their size plus the sha256 of their
# first, middle and last 4 MiB (a safetensors header, and bytes of the first, a middle and the
# last tensors). Reading 16 GB of weights at every start would cost a minute; an edit in place
# that keeps the size and all three windows is not what this guards against (a replaced or
# re-exported checkpoint is).
SAMPLED_ABOVE = 256 << 20
_WINDOW = 4 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= SAMPLED_ABOVE:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
            return digest.hexdigest()
        for offset in (0, size // 2, size - _WINDOW):
            handle.seek(offset)
            digest.update(handle.read(_WINDOW))
    return "sampled:" + digest.hexdigest()


def _files_of(key: str, location: Path) -> list[Path]:
    if location.is_file():
        return [location]
    if not location.is_dir():
        return []  # a Hub dataset name: nothing local to fingerprint
    if key == "tokenizer.path":
        return [location / name for name in TOKENIZER_FILES if (location / name).is_file()]
    return sorted(p for p in location.rglob("*") if p.is_file() and not p.name.startswith("."))


def fingerprint_inputs(sources: Mapping[str, str | Path | None]) -> Fingerprints:
    """Size and sha256 of each local file behind the config keys of ``sources``.

    Args:
        sources: config key (``"data.source"``, ``"tokenizer.path"``) -> a local file, a local
            directory (every file in it; for ``tokenizer.path`` the tokenizer files) or a Hub
            name / None (skipped).
    """
    prints: Fingerprints = {}
    for key, value in sources.items():
        if value is None:
            continue
        location = Path(value)
        files = _files_of(key, location)
        if files:
            prints[key] = {str(f): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    logger.debug("input fingerprints: %s", {k: len(v) for k, v in prints.items()})
    return prints


def changed_inputs(saved: Fingerprints, current: Fingerprints) -> list[str]:
    """One line per file whose size or content differs, or that appeared or disappeared."""
    lines: list[str] = []
    # A key the checkpoint has no fingerprints for was not fingerprinted by the version of tune
    # that wrote it: nothing to compare.
    for key in sorted(saved):
        before, now = saved.get(key, {}), current.get(key, {})
        for name in sorted(set(before) | set(now)):
            if name not in now:
                lines.append(f"{key}: {name} is gone")
            elif name not in before:
                lines.append(f"{key}: {name} is new")
            elif before[name]["size"] != now[name]["size"]:
                lines.append(
                    f"{key}: {name} changed size ({before[name]['size']} -> {now[name]['size']} bytes)"
                )
            elif before[name]["sha256"] != now[name]["sha256"]:
                lines.append(f"{key}: {name} changed content (same size, other sha256)")
    return lines
