"""Hugging Face checkpoint directories: load shard by shard into a (meta) model, save with an index."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tune.checkpoint.containment import ensure_inside
from tune.checkpoint.errors import StateDictMismatchError, first_keys
from tune.checkpoint.key_map import KeyMap, rename_keys
from tune.checkpoint.safe_torch_load import torch_load_weights_only
from tune.checkpoint.safetensors_dir import (
    DEFAULT_MAX_SHARD_BYTES,
    read_headers,
    read_weight_map,
    safe_child_path,
    weight_file_pattern,
    write_safetensors_shards,
)
from tune.checkpoint.safetensors_file import read_safetensors_file
from tune.checkpoint.write_aside import naming_file, write_text_file, written_aside

logger = logging.getLogger(__name__)

HF_SIDE_FILES: tuple[str, ...] = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
_TORCH_BIN = "pytorch_model.bin"


@dataclass
class _Shard:
    """One weight file: its tensors' shapes and stored dtypes, and a reader for a subset."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    read: Callable[[list[str], dict[str, torch.dtype]], dict[str, torch.Tensor]]


def _safetensors_shards(directory: Path, prefix: str) -> list[_Shard]:
    weight_map = read_weight_map(directory, prefix)
    shards = []
    for path, header in read_headers(weight_map).items():
        keys = [k for k, p in weight_map.items() if p == path]

        def read(names: list[str], dtypes: dict[str, torch.dtype], h=header) -> dict:
            return read_safetensors_file(h.path, names, dtype=dtypes, header=h)

        shapes = {k: header.tensors[k].shape for k in keys}
        shards.append(_Shard(path, shapes, {k: header.tensors[k].dtype for k in keys}, read))
    return shards


def _torch_bin_shards(directory: Path) -> list[_Shard]:
    """`pytorch_model.bin` files, opened with `torch.load(weights_only=True, mmap=True)`."""
    index = directory / f"{_TORCH_BIN}.index.json"
    if index.is_file():
        ensure_inside(index.name, directory, "index file")
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        paths = [safe_child_path(directory, n) for n in names]
    else:
        paths = [ensure_inside(_TORCH_BIN, directory, "weight file")]
    shards = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: weight file {path.name!r} is missing")
        state = torch_load_weights_only(path, mmap=True)

        def read(names: list[str], dtypes: dict[str, torch.dtype], s=state) -> dict:
            return {n: s[n].to(dtypes[n], copy=True) for n in names}

        shapes = {k: tuple(v.shape) for k, v in state.items()}
        shards.append(_Shard(path, shapes, {k: v.dtype for k, v in state.items()}, read))
    return shards


def _open_shards(directory: Path, prefix: str) -> list[_Shard]:
    has_bin = (directory / _TORCH_BIN).is_file() or (
        directory / f"{_TORCH_BIN}.index.json"
    ).is_file()
    has_st = (directory / f"{prefix}.safetensors").is_file() or (
        directory / f"{prefix}.safetensors.index.json"
    ).is_file()
    if has_bin and not has_st:
        return _torch_bin_shards(directory)
    return _safetensors_shards(directory, prefix)


def _dtype_problem(stored: torch.dtype, wanted: torch.dtype) -> str | None:
    """Why a stored tensor cannot fill a model tensor, or None.

    Casts within a kind are fine (bf16 -> float32, int32 -> int64); across kinds they would
    silently change the values (float -> int truncates, int -> float loads an index as a weight).
    """
    if wanted.is_floating_point and not stored.is_floating_point:
        return (
            f"has {hf_dtype_name(stored)}, model expects a floating dtype ({hf_dtype_name(wanted)})"
        )
    if not wanted.is_floating_point and stored.is_floating_point:
        return (
            f"has {hf_dtype_name(stored)}, model expects an integer or bool dtype "
            f"({hf_dtype_name(wanted)}): a cast would truncate the values"
        )
    return None


def _alias_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Each state-dict name -> all names sharing its tensor (tied weights), itself included."""
    by_id: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(tensor), []).append(name)
    return {name: tuple(group) for group in by_id.values() for name in group}


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(value, nn.Parameter) or attr in module._parameters:
        module._parameters[attr] = value  # type: ignore[assignment]
    else:
        module._buffers[attr] = value


def load_hf_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    key_map: KeyMap | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    prefix: str = "model",
) -> None:
    """Load a Hugging Face weight directory into `model`, one shard at a time, with `assign=True`.

    Build the model on the meta device and peak memory stays near one copy of the weights. Every
    key, shape and dtype kind is checked against the model before any data is read: floating
    tensors are cast to the model's (or `dtype`), but an integer or bool tensor is refused for a
    floating parameter or buffer. Tied parameters (one
    tensor under several names) stay tied. Non-persistent buffers (e.g. RoPE tables) are not in a
    checkpoint: initialise them yourself.

    Args:
        model: the target module (meta, CPU or accelerator).
        directory: holds `model.safetensors`, `model.safetensors.index.json` + shards, or (read with
            `torch.load(weights_only=True)`) `pytorch_model.bin` files.
        key_map: checkpoint name -> model name (HF -> native); return None to skip a key.
        dtype: dtype for floating-point tensors; default: the model's current dtype per tensor.
        device: where tensors of meta parameters go; other tensors stay on their device.
        prefix: safetensors file name prefix.

    Raises:
        StateDictMismatchError: missing keys, unexpected keys, wrong shapes or a non-floating
            tensor for a floating one (names the file, the first differing keys and both
            shapes/dtypes).
        pickle.UnpicklingError: a `pytorch_model.bin` the weights-only unpickler refuses (names
            the file).
        CorruptCheckpointError: a truncated or malformed file.
        FileNotFoundError: no weights, or a shard named by the index is missing.
    """
    directory = Path(directory)
    expected = model.state_dict(keep_vars=True)
    aliases = _alias_groups(model)
    shards = _open_shards(directory, prefix)

    plan: list[tuple[_Shard, dict[str, str]]] = []
    loaded: dict[str, str] = {}  # native name -> "file: key"
    unexpected: dict[Path, list[str]] = {}
    mismatched: list[str] = []
    wrong_dtypes: list[str] = []
    for shard in shards:
        rename: dict[str, str] = {}
        for key, shape in shard.shapes.items():
            name = key_map(key) if key_map is not None else key
            if name is None:
                continue
            if name not in expected:
                unexpected.setdefault(shard.path, []).append(
                    key if name == key else f"{key}->{name}"
                )
                continue
            want = tuple(expected[name].shape)
            if want != tuple(shape):
                mismatched.append(
                    f"{shard.path.name}: {key!r} has shape {list(shape)}, model {name!r} "
                    f"expects {list(want)}"
                )
                continue
            if (problem := _dtype_problem(shard.dtypes[key], expected[name].dtype)) is not None:
                wrong_dtypes.append(f"{shard.path.name}: {key!r} {problem} (model {name!r})")
                continue
            tied = [a for a in aliases[name] if a in loaded]
            if tied:
                if name in loaded:
                    raise StateDictMismatchError(
                        f"{directory}: {loaded[name]} and {shard.path.name}: {key} both map to {name!r}"
                    )
                logger.debug("skipping %s: tied to already loaded %s", name, tied[0])
                continue
            loaded[name] = f"{shard.path.name}: {key}"
            rename[key] = name
        plan.append((shard, rename))
    covered = {a for name in loaded for a in aliases[name]}
    missing = [k for k in expected if k not in covered]
    if unexpected or mismatched or wrong_dtypes or missing:
        lines = [f"{directory}: checkpoint does not match the model"]
        if missing:
            lines.append(f"missing keys (model has, checkpoint lacks): {first_keys(missing)}")
        for path, keys in unexpected.items():
            lines.append(f"unexpected keys in {path.name}: {first_keys(keys)}")
        if mismatched:
            lines.append("shape mismatches: " + "; ".join(mismatched[:5]))
        if wrong_dtypes:
            lines.append("dtype mismatches: " + "; ".join(wrong_dtypes[:5]))
        raise StateDictMismatchError("\n  ".join(lines))

    for shard, rename in plan:
        if not rename:
            continue
        dtypes = {}
        for key, name in rename.items():
            current = expected[name]
            floating = current.is_floating_point()
            dtypes[key] = dtype if (dtype is not None and floating) else current.dtype
        tensors = shard.read(list(rename), dtypes)
        batch = {}
        for key, tensor in tensors.items():
            current = expected[rename[key]]
            target = torch.device(device) if current.is_meta else current.device
            batch[rename[key]] = tensor.to(target)
        result = model.load_state_dict(batch, strict=False, assign=True)
        if result.unexpected_keys:  # cannot happen after the checks above; never ignore it
            raise StateDictMismatchError(f"{shard.path}: unexpected {result.unexpected_keys}")
        del tensors, batch
        logger.debug("loaded %d tensors from %s", len(rename), shard.path)

    # assign=True replaced the tensor under one name only: point the other names at it again.
    state = model.state_dict(keep_vars=True)
    for name in loaded:
        for alias in aliases[name]:
            if alias != name:
                _set_tensor(model, alias, state[name])


def hf_dtype_name(dtype: torch.dtype) -> str:
    """The `config.json` spelling of a dtype, e.g. `torch.bfloat16` -> `"bfloat16"`."""
    return str(dtype).removeprefix("torch.")


def _copy_side_files(source_dir: Path, directory: Path, names: Iterable[str]) -> None:
    for name in names:
        src = source_dir / name
        if src.is_file():
            ensure_inside(name, source_dir, "side file")
        if src.is_file() and src.resolve() != (directory / name).resolve():
            with naming_file(directory / name):
                shutil.copyfile(src, directory / name)


def write_hf_metadata(
    directory: str | os.PathLike[str],
    *,
    weights_dtype: torch.dtype | None,
    config: Mapping[str, object] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    side_files: Iterable[str] = HF_SIDE_FILES,
) -> None:
    """Write `config.json` (with `dtype` set to the weights' dtype) and copy tokenizer files.

    Args:
        directory: the HF output directory (created if needed).
        weights_dtype: dtype of the saved floating-point weights (None leaves `dtype` as it is).
        config: `config.json` content (default: `source_dir/config.json` when present).
        source_dir: the original HF directory to copy `side_files` from.
        side_files: file names copied from `source_dir` when present.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if source_dir is not None:
        _copy_side_files(Path(source_dir), directory, side_files)
        if config is None and (Path(source_dir) / "config.json").is_file():
            config = json.loads((Path(source_dir) / "config.json").read_text())
    if config is None:
        return
    content = dict(config)
    if weights_dtype is not None:
        content["dtype"] = hf_dtype_name(weights_dtype)
        if "torch_dtype" in content:  # older transformers spelling
            content["torch_dtype"] = content["dtype"]
    write_text_file(directory / "config.json", json.dumps(content, indent=2, sort_keys=True) + "\n")


def save_hf_checkpoint(
    directory: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    key_map: KeyMap | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    config: Mapping[str, object] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    side_files: Iterable[str] = HF_SIDE_FILES,
    fsync: bool = False,
) -> list[Path]:
    """Write a Hugging Face directory that `from_pretrained` and vLLM read as it is.

    Writes tokenizer and generation files copied from `source_dir`, `config.json` (from `config`, or
    `source_dir/config.json`) with its `dtype` updated, then the weights (index last). Returns the
    weight files.

    Args:
        directory: output directory (created if needed).
        state_dict: native name -> tensor (CPU or accelerator).
        key_map: native name -> HF name; return None to leave a key out (e.g. a tied `lm_head`).
        dtype: cast floating-point tensors to this dtype (default: as they are).
        max_shard_size: largest shard in bytes or e.g. `"5GB"`.
        config: the model's `config.json` content.
        source_dir: the original HF directory, for `config.json` and tokenizer/generation files.
        side_files: file names copied from `source_dir` when present.
        fsync: flush files to stable storage.

    The directory is written aside (`.<name>.tmp-<pid>`) and renamed into place: a full disk or a
    kill never leaves a `config.json` without weights, and an existing directory stays as it was
    until the new one is complete (its files other than the weights are carried over).

    Raises:
        CheckpointWriteError: an OSError (e.g. ENOSPC) while writing; names `directory` and the
            file, keeps errno; the partial output is removed.
    """
    directory = Path(directory)
    tensors = rename_keys(state_dict, key_map, where=str(directory))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    floats = [v.dtype for v in tensors.values() if v.is_floating_point()]
    pattern = weight_file_pattern("model")
    with written_aside(
        directory, fsync=fsync, carry_over=lambda name: not pattern.fullmatch(name)
    ) as tmp:
        write_hf_metadata(
            tmp,
            weights_dtype=floats[0] if floats else None,
            config=config,
            source_dir=source_dir,
            side_files=side_files,
        )
        names = write_safetensors_shards(tmp, tensors, max_shard_size=max_shard_size, fsync=fsync)
    return [directory / name for name in names]
