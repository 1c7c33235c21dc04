"""Fingerprints (size + sha256) of the local files a run reads, kept with its checkpoints.

A resume that compares only settings misses a data file edited in place or a ``tokenizer.json``
replaced at the same path: the continued run would draw other samples or token ids. Take the
fingerprints at the start of a run, save them with every step (``resume_run`` keeps them in
``extra["inputs"]``) and compare them before resuming::

    inputs = fingerprint_inputs({"data": "rows.jsonl", "tokenizer": "tok/"},
                                select={"tokenizer": TOKENIZER_FILES})
    ...
    if problems := changed_inputs(saved_inputs, inputs):
        raise RuntimeError("; ".join(problems))
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

Fingerprints = dict[str, dict[str, dict[str, int | str]]]  # name -> file -> {size, sha256}

# Files of a Hugging Face tokenizer directory that change token ids or the chat template.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
_CHUNK = 1 << 20
# Files above this size are fingerprinted by sampling: their size plus the sha256 of their first,
# middle and last 4 MiB (a safetensors header, and bytes of the first, a middle and the last
# tensors). Reading 16 GB of weights at every start would cost a minute; an edit in place that
# keeps the size and all three windows is not what this guards against (a replaced or
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


def _files_of(location: Path, only: Sequence[str] | None) -> list[Path]:
    if location.is_file():
        return [location]
    if not location.is_dir():
        return []  # e.g. a Hub dataset name: nothing local to fingerprint
    if only is not None:
        return [location / name for name in only if (location / name).is_file()]
    return sorted(p for p in location.rglob("*") if p.is_file() and not p.name.startswith("."))


def fingerprint_inputs(
    sources: Mapping[str, str | os.PathLike[str] | None],
    *,
    select: Mapping[str, Sequence[str]] | None = None,
) -> Fingerprints:
    """Size and sha256 of each local file behind each named source.

    Files over ``SAMPLED_ABOVE`` bytes are hashed from three 4 MiB windows (``"sampled:..."``).

    Args:
        sources: a name (e.g. the config key ``"data.source"``) -> a local file, a local
            directory (every file under it, hidden files aside), or a Hub name / None (skipped:
            nothing local).
        select: name -> the only file names to take when that source is a directory (e.g.
            ``TOKENIZER_FILES`` for a tokenizer directory that also holds weights).

    Returns:
        name -> file path -> ``{"size": bytes, "sha256": hex}``; names with no local file are
        left out.
    """
    prints: Fingerprints = {}
    for name, value in sources.items():
        if value is None:
            continue
        files = _files_of(Path(value), (select or {}).get(name))
        if files:
            prints[name] = {str(f): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    logger.debug("input fingerprints: %s", {k: len(v) for k, v in prints.items()})
    return prints


def changed_inputs(saved: Fingerprints, current: Fingerprints) -> list[str]:
    """One line per file whose size or content differs, or that appeared or disappeared.

    Names absent from ``saved`` (not fingerprinted when it was written) are not compared.
    """
    lines: list[str] = []
    for key in sorted(saved):
        before, now = saved.get(key, {}), current.get(key, {})
        for name in sorted(set(before) | set(now)):
            if name not in now:
                lines.append(f"{key}: {name} is gone")
            elif name not in before:
                lines.append(f"{key}: {name} is new")
            elif (size := before[name]["size"]) != now[name]["size"]:
                lines.append(f"{key}: {name} changed size ({size} -> {now[name]['size']} bytes)")
            elif before[name]["sha256"] != now[name]["sha256"]:
                lines.append(f"{key}: {name} changed content (same size, other sha256)")
    return lines
