"""Capture and restore random number generator states (python, numpy, torch CPU, CUDA)."""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states, as plain Python/tensor values that `torch.save` stores safely.

    Returns a dict with `python`, `torch` and, where available, `numpy` and `cuda` (one state per
    visible CUDA device).
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what `capture_rng_state` returned; parts this process cannot use are skipped.

    Args:
        state: a dict from `capture_rng_state` (possibly loaded from disk).
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:
            logger.warning("checkpoint has a numpy RNG state but numpy is not installed; skipped")
        else:
            np_state = state["numpy"]
            np.random.set_state(
                (
                    np_state["kind"],
                    np_state["keys"].numpy().astype(np.uint32),
                    np_state["pos"],
                    np_state["has_gauss"],
                    np_state["cached_gaussian"],
                )
            )
    if "cuda" in state:
        if not torch.cuda.is_available():
            logger.warning("checkpoint has CUDA RNG states but CUDA is not available; skipped")
        elif len(state["cuda"]) != torch.cuda.device_count():
            logger.warning(
                "checkpoint has %d CUDA RNG states, this process sees %d devices; skipped",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
