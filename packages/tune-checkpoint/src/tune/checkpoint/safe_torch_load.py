"""`torch.load(weights_only=True)` whose refusals name the file that was refused."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


def torch_load_weights_only(path: Path, *, mmap: bool = False) -> Any:
    """Load a `torch.save` file on CPU with the restricted (weights-only) unpickler.

    Args:
        path: the file.
        mmap: memory-map the tensors when the file is in the zip format (older files are read).

    Raises:
        pickle.UnpicklingError: the file holds something the weights-only unpickler refuses; the
            message starts with the path (torch's own message, chained, does not name it).
    """
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: refused to load: {err}") from err
