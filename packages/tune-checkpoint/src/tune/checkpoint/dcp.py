"""Sharded state with torch.distributed.checkpoint (DCP): save, load (resharding), export to HF."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tune.checkpoint.errors import StateDictMismatchError, first_keys
from tune.checkpoint.hf_checkpoint import HF_SIDE_FILES, write_hf_metadata
from tune.checkpoint.key_map import KeyMap
from tune.checkpoint.safetensors_dir import (
    DEFAULT_MAX_SHARD_BYTES,
    parse_size,
    plan_shards,
    shard_file_names,
    weight_file_pattern,
    write_index,
)
from tune.checkpoint.safetensors_file import write_safetensors_file
from tune.checkpoint.write_aside import naming_file, written_aside

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

    from tune.checkpoint.dcp_safe_read import WeightsOnlyLoadPlanner

# torch.distributed.checkpoint (and the DTensor and sympy modules it pulls in) costs ~0.5 s to
# import; it is imported by the functions that use it, so a single-device run never pays for it.

logger = logging.getLogger(__name__)


def save_sharded(directory: str | os.PathLike[str], state_dict: dict[str, Any]) -> None:
    """Save a (possibly DTensor-sharded) state dict with DCP; every rank calls this.

    Args:
        directory: the DCP directory (one `.distcp` file per rank plus `.metadata`).
        state_dict: nested dict of tensors/DTensors and plain values, e.g.
            `{"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(...)}`.
    """
    import torch.distributed.checkpoint as dcp

    dcp.save(state_dict, checkpoint_id=str(directory))


def read_sharded_metadata(
    directory: str | os.PathLike[str],
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Global shape and dtype of every tensor in a DCP directory (flattened `a.b.c` names).

    `.metadata` is unpickled with an allow-list of DCP metadata classes (see `read_dcp_metadata`).
    """
    from tune.checkpoint.dcp_safe_read import read_dcp_metadata

    return _tensor_shapes(read_dcp_metadata(str(directory)))


def _tensor_shapes(metadata: Metadata) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {
        key: (tuple(item.size), item.properties.dtype)
        for key, item in metadata.state_dict_metadata.items()
        if isinstance(item, TensorStorageMetadata)
    }


def load_sharded(directory: str | os.PathLike[str], state_dict: dict[str, Any]) -> None:
    """Load a DCP directory in place into `state_dict`, resharding to this run's layout.

    The world size may differ from the one that saved. Every rank calls this with its own
    (sharded) template state dict. Nothing in the directory runs code: `.metadata` is unpickled
    once, with an allow-list, and non-tensor values with `torch.load(weights_only=True)`.

    Raises:
        pickle.UnpicklingError: `.metadata` or a saved value refers to a global that is not
            allowed (names the file or key, and the global).
        StateDictMismatchError: a key of the template is not in the checkpoint, or its global shape
            differs (names the directory and the first keys).
    """
    from tune.checkpoint.dcp_safe_read import WeightsOnlyLoadPlanner, read_dcp_metadata

    metadata = read_dcp_metadata(str(directory))
    saved = _tensor_shapes(metadata)
    flat = _flatten(state_dict)
    missing = [k for k, v in flat.items() if isinstance(v, torch.Tensor) and k not in saved]
    wrong = [
        f"{k}: checkpoint {list(saved[k][0])}, template {list(v.shape)}"
        for k, v in flat.items()
        if isinstance(v, torch.Tensor) and k in saved and tuple(v.shape) != saved[k][0]
    ]
    if missing or wrong:
        msg = f"{directory}: DCP checkpoint does not match the state dict"
        if missing:
            msg += f"\n  missing keys (template has, checkpoint lacks): {first_keys(missing)}"
        if wrong:
            msg += "\n  shape mismatches: " + "; ".join(wrong[:5])
        raise StateDictMismatchError(msg)
    _safe_dcp_load(state_dict, directory, metadata, WeightsOnlyLoadPlanner(directory))


def _safe_dcp_load(
    state_dict: dict[str, Any],
    directory: str | os.PathLike[str],
    metadata: Metadata,
    planner: WeightsOnlyLoadPlanner,
    no_dist: bool = False,
) -> None:
    """`dcp.load` through the verified metadata; a refused pickle is raised as itself."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException

    from tune.checkpoint.dcp_safe_read import VerifiedMetadataReader

    try:
        dcp.load(
            state_dict,
            storage_reader=VerifiedMetadataReader(directory, metadata),
            planner=planner,
            no_dist=no_dist,
        )
    except CheckpointException as err:  # DCP wraps every rank's error in a BaseException
        refused = [e for e, _ in err.failures.values() if isinstance(e, pickle.UnpicklingError)]
        if refused:
            raise refused[0] from err
        raise


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def export_dcp_to_hf(
    dcp_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    state_prefix: str = "model.",
    key_map: KeyMap | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    config: Mapping[str, object] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    side_files: Iterable[str] = HF_SIDE_FILES,
) -> list[Path]:
    """Write the model tensors of a DCP checkpoint as an HF directory, one shard in memory.

    Runs in a single process (no process group needed), e.g. after training or on another machine.

    Args:
        dcp_dir: a DCP directory written by `save_sharded`.
        out_dir: the HF output directory.
        state_prefix: only flattened keys starting with this are exported, with it stripped
            (`"model."` for `{"model": ..., "optim": ...}`; `""` for everything).
        key_map: native name -> HF name; None drops a key.
        dtype: cast floating-point tensors to this dtype.
        max_shard_size: largest shard in bytes or e.g. `"5GB"`.
        config: `config.json` content (default: `source_dir/config.json`), `dtype` updated.
        source_dir: the original HF directory to copy tokenizer and generation files from.
        side_files: file names copied from `source_dir` when present.

    Returns:
        The written shard files.

    Raises:
        CheckpointWriteError: an OSError while writing; `out_dir` is written aside and renamed
            into place, so the previous one (if any) is left as it was.
    """
    from tune.checkpoint.dcp_safe_read import WeightsOnlyLoadPlanner, read_dcp_metadata

    out = Path(out_dir)
    selected: dict[str, tuple[str, tuple[int, ...], torch.dtype]] = {}  # hf -> (dcp, shape, dtype)
    metadata = read_dcp_metadata(str(dcp_dir))
    for key, (shape, saved_dtype) in _tensor_shapes(metadata).items():
        if not key.startswith(state_prefix):
            continue
        name = key.removeprefix(state_prefix)
        hf = key_map(name) if key_map is not None else name
        if hf is None:
            continue
        if hf in selected:
            raise StateDictMismatchError(f"{dcp_dir}: two keys map to {hf!r}")
        selected[hf] = (key, shape, saved_dtype)
    if not selected:
        raise StateDictMismatchError(f"{dcp_dir}: no tensor key starts with {state_prefix!r}")

    def out_dtype(saved: torch.dtype) -> torch.dtype:
        return dtype if dtype is not None and saved.is_floating_point else saved

    sizes = {
        hf: torch.Size(shape).numel() * out_dtype(dt).itemsize
        for hf, (_, shape, dt) in selected.items()
    }
    shards = plan_shards(sizes, parse_size(max_shard_size))
    names = shard_file_names("model", len(shards))
    pattern = weight_file_pattern("model")
    with written_aside(out, carry_over=lambda name: not pattern.fullmatch(name)) as tmp:
        weight_map: dict[str, str] = {}
        for keys, file_name in zip(shards, names, strict=True):
            chunk = {
                selected[hf][0]: torch.empty(selected[hf][1], dtype=selected[hf][2]) for hf in keys
            }
            planner = WeightsOnlyLoadPlanner(dcp_dir, allow_partial_load=True)
            _safe_dcp_load(chunk, dcp_dir, metadata, planner, no_dist=True)
            tensors = {hf: chunk[selected[hf][0]].to(out_dtype(selected[hf][2])) for hf in keys}
            with naming_file(tmp / file_name):
                write_safetensors_file(tmp / file_name, tensors)
            weight_map.update(dict.fromkeys(keys, file_name))
            del chunk, tensors
        if len(shards) > 1:
            write_index(tmp, "model", weight_map, sum(sizes.values()), fsync=False)
        floats = [out_dtype(dt) for _, _, dt in selected.values() if dt.is_floating_point]
        write_hf_metadata(
            tmp,
            weights_dtype=floats[0] if floats else None,
            config=config,
            source_dir=source_dir,
            side_files=side_files,
        )
    logger.info("exported %d tensors from %s to %s", len(selected), dcp_dir, out)
    return [out / n for n in names]
