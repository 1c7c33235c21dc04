"""A model snapshot from the Hugging Face Hub, with one-line errors that never show the token.

Needs ``huggingface_hub`` (``pip install 'tune-checkpoint[hub]'``); it is imported only here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tune.checkpoint.errors import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_OFFLINE = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError"}
_NO_ACCESS = {"GatedRepoError", "RepositoryNotFoundError"}


logger = logging.getLogger(__name__)

# The files of a model snapshot that tune reads: config, weights, tokenizer, chat template.
MODEL_FILES = (
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
)


class HubDownloadError(CheckpointError):
    """A download failed; the message is one line, with a hint, and the token scrubbed."""


def is_repo_id(value: str) -> bool:
    """Whether ``value`` is a Hub repo id, ``name`` or ``owner/name`` (no ``..``, no leading ``-``)."""
    return bool(_REPO_ID.match(value)) and ".." not in value


def download_snapshot(
    repo_id: str,
    local_dir: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    ignore_patterns: Sequence[str] | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """Download ``repo_id`` into ``local_dir`` with ``huggingface_hub.snapshot_download``.

    Args:
        repo_id: ``owner/name`` on the Hub.
        local_dir: the directory to fill (created).
        revision: branch, tag or commit (default: the main branch).
        token: access token (default: ``HF_TOKEN`` or the cached login).
        ignore_patterns: file globs to skip (None: no filter).
        allow_patterns: file globs to keep only (None: no filter).

    Returns:
        The local directory.

    Raises:
        ImportError: ``huggingface_hub`` is not installed.
        ValueError: ``repo_id`` is not a repo id.
        HubDownloadError: the download failed (no connection, offline mode, gated or unknown
            repo, ...): ``cannot download <repo> (<hint>): <ErrorType>: <message>``.
    """
    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo id (expected owner/name)")
    import huggingface_hub

    options: dict[str, Any] = {"revision": revision, "local_dir": local_dir, "token": token}
    options["ignore_patterns"] = list(ignore_patterns) if ignore_patterns else None
    if allow_patterns:
        options["allow_patterns"] = list(allow_patterns)
    try:
        path = huggingface_hub.snapshot_download(repo_id, **options)
    except Exception as exc:  # one line, never a traceback; the token is scrubbed
        raise HubDownloadError(_one_line(repo_id, exc, token)) from None
    return Path(path)


def resolve_model_dir(
    name_or_path: str | Path, *, revision: str | None = None, token: str | None = None
) -> Path:
    """A local model directory for ``name_or_path``: the path itself when it exists, else the
    snapshot of that Hub repo in huggingface_hub's cache (downloaded on first use, then reused
    offline).

    Only the files tune reads are fetched (``MODEL_FILES``: config, safetensors weights,
    tokenizer, chat template), never ``*.bin``, ``*.pth`` or ``original/``.

    Raises:
        FileNotFoundError: not an existing path, and not a repo id either.
        ImportError: ``huggingface_hub`` is not installed.
        HubDownloadError: not cached, and the download failed (one line, with a hint).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    repo_id = str(name_or_path)
    if not is_repo_id(repo_id):
        raise FileNotFoundError(f"{repo_id} is neither an existing path nor a Hub repo id")
    import huggingface_hub

    options: dict[str, Any] = {"revision": revision, "token": token,
                               "allow_patterns": list(MODEL_FILES)}  # fmt: skip
    try:  # a snapshot already in the cache needs no connection
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True, **options))
    except Exception:  # not cached (or not complete): download it
        logger.info("downloading %s from the Hugging Face Hub into its cache", repo_id)
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, **options))
    except Exception as exc:
        raise HubDownloadError(_one_line(repo_id, exc, token)) from None


def repo_id_of_snapshot(path: str | Path) -> str | None:
    """The repo id of a directory in huggingface_hub's cache
    (``.../models--owner--name/snapshots/<commit>``), or None for any other directory."""
    parts = Path(path).expanduser().resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return None


def _one_line(repo_id: str, exc: Exception, token: str | None) -> str:
    """``cannot download <repo> (<hint>): <ErrorType>: <message>``, the token scrubbed."""
    name = type(exc).__name__
    hint = ""
    if name in _OFFLINE:
        hint = " (no connection to the Hub, or HF_HUB_OFFLINE=1 is set)"
    elif name in _NO_ACCESS:
        hint = " (check the repo id; gated models need a token with access)"
    text = " ".join((str(exc).replace(token, "***") if token else str(exc)).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"cannot download {repo_id}{hint}: {name}: {text}"
