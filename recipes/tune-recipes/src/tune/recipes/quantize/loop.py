"""The ``quantize`` recipe: check the scheme on a meta-device model, load (+ merge an adapter),
quantize (tune.quant) and write a quantized directory (``save_quantized_dir``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tune.checkpoint import check_output_apart
from tune.config import to_container
from tune.models import model_from_checkpoint_dir
from tune.quant import (
    UnsupportedSchemeError,
    check_scheme_supported,
    model_storage_bytes,
    quantize_model,
    save_quantized_dir,
    select_linear_modules,
    validate_modules_for_scheme,
)
from tune.recipes.common.generation_model import load_generation_model
from tune.recipes.common.recipe_run import run_in_one_process
from tune.recipes.common.run_directory import model_inputs
from tune.recipes.common.runtime import DTYPES, Runtime
from tune.recipes.quantize.checks import quantize_device_type
from tune.recipes.quantize.config import QuantizeConfig


def preflight(cfg: QuantizeConfig) -> list[str]:
    """The native names of the layers to quantize, checked (device, dtype, shapes); no weight read.

    Args:
        cfg: a quantize config.

    Raises:
        UnsupportedSchemeError: the scheme does not fit the device, dtype, a chosen layer's shape,
            or the tied LM head.
        ValueError: a model family whose HF tensors are fused (no one-to-one key names).
        OutputOverlapsInputError: ``output_dir`` is, contains or lies inside an input.
    """
    check_output_apart(
        cfg.output_dir, dict(model_inputs(to_container(cfg))), output_name="output_dir"
    )
    q, dtype = cfg.quantization, DTYPES[cfg.model.dtype]
    device_type = quantize_device_type(cfg.device)
    check_scheme_supported(q.scheme, device_type, dtype)
    skeleton = model_from_checkpoint_dir(cfg.model.checkpoint_dir, device="meta")
    if not skeleton.keys_one_to_one:
        raise ValueError(
            f"{cfg.model.checkpoint_dir}: {skeleton.config.model_type} checkpoints fuse tensors "
            "(no one-to-one HF names), which a quantized directory cannot store"
        )
    fqns = select_linear_modules(skeleton.model, q.include, q.exclude)
    validate_modules_for_scheme(skeleton.model, fqns, q.scheme, device=device_type, dtype=dtype)
    if getattr(skeleton.model, "tie_word_embeddings", False) and "output" in fqns:
        raise UnsupportedSchemeError(
            f"{cfg.model.checkpoint_dir} ties the LM head to the embeddings: quantizing 'output' "
            "would untie them; keep 'output' in quantization.exclude"
        )
    return fqns


def run(config: QuantizeConfig) -> dict[str, Any]:
    """Quantize ``config.model`` and write ``config.output_dir`` (a validated quantize config).

    Returns:
        ``output_dir``, ``quantized_modules`` (native names), ``weights_file``, ``hf_loadable``,
        ``float_bytes`` and ``quantized_bytes`` (model storage before and after).
    """
    return run_in_one_process("quantize", config, _quantize)


def _quantize(cfg: QuantizeConfig, rt: Runtime) -> dict[str, Any]:
    q, planned = cfg.quantization, preflight(cfg)
    # ---- model: checkpoint, adapter merged into the float weights ---------------------------
    loaded = load_generation_model(
        cfg.model.checkpoint_dir, dtype=rt.dtype, device=rt.device,
        adapter_dir=cfg.model.adapter_dir, merge_adapter=cfg.model.adapter_dir is not None,
    )  # fmt: skip
    ckpt = loaded.checkpoint
    float_bytes = model_storage_bytes(ckpt.model)

    # ---- quantize -------------------------------------------------------------------------
    quantized = quantize_model(ckpt.model, q.scheme, include=q.include, exclude=q.exclude)
    if sorted(quantized) != sorted(planned):  # the preflight and the loaded model must agree
        raise RuntimeError(f"quantized {quantized}, but the preflight planned {planned}")
    quantized_bytes = model_storage_bytes(ckpt.model)

    # ---- write: weights under HF names, the source's config and tokenizer, the manifest ------
    manifest = save_quantized_dir(
        cfg.output_dir, ckpt.model, scheme=q.scheme, dtype=rt.dtype,
        key_map=ckpt.native_to_hf_key, source_dir=cfg.model.checkpoint_dir,
        weights_format=cfg.weights_format,
    )  # fmt: skip
    out = Path(cfg.output_dir).expanduser()
    sys.stdout.write(
        f"quantized {len(quantized)} linear layers with {q.scheme}: {float_bytes / 2**20:.2f} MiB "
        f"-> {quantized_bytes / 2**20:.2f} MiB; wrote {out} ({manifest.weights_file}"
        f"{', loadable by transformers' if manifest.hf_loadable else ''})\n"
    )
    return {
        "output_dir": out, "quantized_modules": quantized, "weights_file": manifest.weights_file,
        "hf_loadable": manifest.hf_loadable, "float_bytes": float_bytes,
        "quantized_bytes": quantized_bytes,
    }  # fmt: skip
