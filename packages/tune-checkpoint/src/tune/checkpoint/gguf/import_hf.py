"""GGUF -> HF: a config, a state dict in HF names and layout, tokenizer files; or a whole directory.

config, state_dict, tokenizer_files = gguf_to_hf("model.Q4_K_M.gguf")
convert_gguf_to_hf_dir("model.Q4_K_M.gguf", "model-hf")   # from_pretrained reads it
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tune.checkpoint.gguf.config_import import hf_config_from_gguf
from tune.checkpoint.gguf.reader import read_gguf
from tune.checkpoint.gguf.tensor_names import LM_HEAD, gguf_to_hf_names
from tune.checkpoint.gguf.tensor_transforms import from_gguf_layout
from tune.checkpoint.hf_checkpoint import hf_dtype_name
from tune.checkpoint.safetensors_dir import write_safetensors_shards
from tune.checkpoint.write_aside import write_text_file, written_aside

logger = logging.getLogger(__name__)


def tokenizer_files_from_metadata(metadata: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`{"tokenizer.json": ..., "tokenizer_config.json": ...}` from the GGUF tokenizer keys, or {}
    (with a warning) when the file has no tokenizer or the tokenizer import is not available."""
    if "tokenizer.ggml.model" not in metadata:
        logger.warning("%s: no tokenizer in the GGUF metadata; writing no tokenizer files", where)
        return {}
    try:
        from tune.checkpoint.gguf.tokenizer_import import hf_tokenizer_files_from_gguf
    except ModuleNotFoundError as err:
        if err.name != "tune.checkpoint.gguf.tokenizer_import":
            raise
        logger.warning("%s: tokenizer import is not available; writing no tokenizer files", where)
        return {}
    return dict(hf_tokenizer_files_from_gguf(metadata, where=where))


def gguf_to_hf(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read a GGUF model as an HF model: `(config, state_dict, tokenizer_files)`.

    Tensors are dequantized to float32, renamed to HF names, and llama.cpp's layout is undone (Q/K
    row order of the llama family, gemma's `+1` on norms). A tied model has no `lm_head.weight`.

    Args:
        path: the `.gguf` file.

    Returns:
        config: `config.json` content (`model_type`, `architectures`, sizes, rope, token ids).
        state_dict: HF name -> float32 tensor (`[out, in]` weights).
        tokenizer_files: file name -> JSON content (`tokenizer.json`, `tokenizer_config.json`),
            empty when the file has no tokenizer.

    Raises:
        FileNotFoundError: no file at `path`.
        GgufFormatError: not GGUF, truncated or malformed.
        UnsupportedGgufError: an unknown architecture (lists the supported ones), a tensor with
            no HF counterpart (names it), a type that cannot be dequantized, or rope scaling that
            cannot be expressed in HF terms.
    """
    contents = read_gguf(path)
    where = str(contents.path)
    config, family = hf_config_from_gguf(contents.metadata, contents.tensors, where)
    names = gguf_to_hf_names(family, config["num_hidden_layers"], contents.tensors, where)
    state_dict = {
        hf_name: from_gguf_layout(family, hf_name, contents.tensors[gguf_name], config)
        for gguf_name, hf_name in names.items()
    }
    if config["tie_word_embeddings"]:
        state_dict.pop(LM_HEAD, None)
    types = sorted(set(contents.tensor_types.values()))
    logger.info(
        "%s: %s model, %d tensors (%s)", where, family.hf_class, len(state_dict), ", ".join(types)
    )
    return config, state_dict, tokenizer_files_from_metadata(contents.metadata, where)


def _generation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {k: config[k] for k in keys if config.get(k) is not None}


def write_hf_directory(
    directory: Path,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    tokenizer_files: Mapping[str, Any],
    dtype: torch.dtype,
) -> None:
    """Fill an (empty, existing) directory: config, generation config, tokenizer, safetensors."""
    content = dict(config)
    content["dtype"] = content["torch_dtype"] = hf_dtype_name(dtype)
    write_text_file(directory / "config.json", json.dumps(content, indent=2) + "\n")
    generation = _generation_config(config)
    write_text_file(directory / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    for name, body in tokenizer_files.items():
        text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
        write_text_file(directory / name, text + ("" if text.endswith("\n") else "\n"))
    tensors = {k: v.to(dtype) for k, v in state_dict.items()}
    write_safetensors_shards(directory, tensors)


def convert_gguf_to_hf_dir(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Convert a GGUF model into an HF directory that `from_pretrained` reads as it is.

    Writes `config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json` and
    `model.safetensors` (sharded with an index past 5 GB) into a sibling temp directory, then
    renames it into place: a failure or a kill never leaves a half directory at `out_dir`.

    Args:
        gguf_path: the `.gguf` file.
        out_dir: the HF directory to create.
        dtype: dtype of the saved weights (the GGUF is dequantized to float32 first).
        overwrite: replace an existing non-empty `out_dir`.

    Raises:
        FileExistsError: `out_dir` exists and is not empty, and `overwrite` is False.
        (and the errors of `gguf_to_hf`)
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir}: directory is not empty; pass overwrite=True to replace it"
        )
    config, state_dict, tokenizer_files = gguf_to_hf(gguf_path)
    with written_aside(out_dir) as tmp:
        write_hf_directory(tmp, config, state_dict, tokenizer_files, dtype)
    logger.info("wrote %s from %s", out_dir, gguf_path)
    return out_dir
