"""`torch.load(weights_only=True)` whose refusals name the file that was refused."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tune.checkpoint.errors import CorruptCheckpointError


def torch_load_weights_only(path: Path, *, mmap: bool = False) -> Any:
    """Load a `torch.save` file on CPU with the restricted (weights-only) unpickler.

    Args:
        path: the file.
        mmap: memory-map the tensors when the file is in the zip format (older files are read).

    Raises:
        pickle.UnpicklingError: the file holds something the weights-only unpickler refuses; the
            message starts with the path (torch's own message, chained, does not name it).
        CorruptCheckpointError: the file is truncated or not a ``torch.save`` file at all
            (torch raises a bare ``RuntimeError`` or ``EOFError`` that does not name it).
    """
    path = Path(path)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(1)
        if head != b"\x80":  # neither the zip format nor a legacy pickle (PROTO opcode first)
            raise CorruptCheckpointError(
                f"{path}: not a readable torch.save file ({path.stat().st_size} bytes; "
                "neither a zip archive nor a pickle)"
            )
    mmap = mmap and is_zip
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: refused to load: {err}") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CorruptCheckpointError(
            f"{path}: not a readable torch.save file ({path.stat().st_size} bytes; truncated or "
            f"overwritten?): {err}"
        ) from err
