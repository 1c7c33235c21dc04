"""Convert a GGUF to an HF directory once and reuse it: `<cache>/<stem>-<sha256[:16]>/`.

The entry is keyed by the file's content hash, so an edited or replaced file gets a new entry. It
is written into a private temp directory, marked complete (a marker file written last), then
renamed into place; the rename fails if another process got there first, and then its entry is
used. A directory without the marker (left by something other than this code) is never used: it
is moved aside and rebuilt. Temp directories of dead processes are removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch

from tune.checkpoint.commit import sha256_file
from tune.checkpoint.gguf.import_hf import gguf_to_hf, write_hf_directory
from tune.checkpoint.write_aside import write_text_file

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".tune-gguf-complete"
_HASH_CHARS = 16


def default_cache_dir() -> Path:
    """`$TUNE_CACHE_DIR/gguf`, else `~/.cache/tune/gguf`."""
    base = os.environ.get("TUNE_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "tune"
    return root / "gguf"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_dead_temps(cache_dir: Path, entry: str) -> None:
    pattern = re.compile(rf"\.{re.escape(entry)}\.(tmp|stale)-(\d+)-\w+")
    for path in cache_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and (match.group(1) == "stale" or not _pid_alive(int(match.group(2)))):
            logger.warning("removing %s left by an interrupted GGUF conversion", path)
            shutil.rmtree(path, ignore_errors=True)


def _set_aside(entry: Path) -> None:
    """Move an incomplete entry out of the way (atomically), then delete it."""
    stale = entry.with_name(f".{entry.name}.stale-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(entry, stale)
    except FileNotFoundError:
        return  # another process moved it first
    if is_complete(stale):  # a concurrent writer finished in between: put its entry back
        try:
            os.rename(stale, entry)
            return
        except OSError:
            pass
    logger.warning("%s has no completion marker; rebuilding it", entry)
    shutil.rmtree(stale, ignore_errors=True)


def _install(tmp: Path, entry: Path) -> None:
    """Rename the finished `tmp` to `entry`; if another process installed one first, keep that."""
    for _ in range(3):
        try:
            os.rename(tmp, entry)  # fails when `entry` is a non-empty directory or a file
            return
        except OSError:
            if is_complete(entry):
                logger.info("%s was built by another process meanwhile; using it", entry)
                return
            _set_aside(entry)
    raise OSError(f"{entry}: could not install the converted directory (keeps being replaced)")


def is_complete(entry: Path) -> bool:
    """Whether `entry` is a finished cache entry (its marker file exists)."""
    return (entry / COMPLETE_MARKER).is_file()


def cached_hf_dir(
    gguf_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """An HF directory converted from `gguf_path`, built on the first call and reused after.

    Args:
        gguf_path: the `.gguf` file.
        cache_dir: where entries live (default: `$TUNE_CACHE_DIR/gguf` or `~/.cache/tune/gguf`).
        dtype: dtype of the saved weights; part of the entry name unless float32.

    Returns:
        `<cache_dir>/<stem>-<first 16 hex of sha256>[-<dtype>]/`, holding what
        `convert_gguf_to_hf_dir` writes plus the completion marker.

    Raises:
        FileNotFoundError: no file at `gguf_path`.
        (and the errors of `gguf_to_hf`)
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{gguf_path.stem}-{sha256_file(gguf_path)[:_HASH_CHARS]}"
    if dtype != torch.float32:
        name += f"-{str(dtype).removeprefix('torch.')}"
    entry = root / name
    if is_complete(entry):
        logger.info("%s: using its HF import in %s", gguf_path, entry)
        return entry
    _remove_dead_temps(root, name)
    tmp = root / f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        config, state_dict, tokenizer_files = gguf_to_hf(gguf_path)
        write_hf_directory(tmp, config, state_dict, tokenizer_files, dtype)
        write_text_file(tmp / COMPLETE_MARKER, f"{gguf_path.resolve()}\n")
        _install(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s into %s", gguf_path, entry)
    return entry
