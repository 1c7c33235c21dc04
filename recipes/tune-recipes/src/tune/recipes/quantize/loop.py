"""The ``quantize`` recipe: check, load (+ merge an adapter), quantize, write a directory.

Reads top to bottom: the scheme is checked against the device, dtype and the model's layer
shapes (from ``config.json``, on the meta device) before any weight is read; the checkpoint
loads as ``generate`` loads it (tune.models, tune.checkpoint, tune.peft); tune.quant quantizes
the chosen linear layers; the directory is written aside and renamed into place.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from tune.models import model_from_checkpoint_dir
from tune.quant import (
    UnsupportedSchemeError,
    check_scheme_supported,
    get_scheme,
    model_storage_bytes,
    quantize_model,
    select_linear_modules,
)
from tune.recipes.common.generation_model import load_generation_model
from tune.recipes.common.quantize_loading import QuantizationManifest
from tune.recipes.common.run_directory import check_output_apart, model_inputs
from tune.recipes.common.runtime import DTYPES, start_runtime, stop_runtime
from tune.recipes.config import ValidationContext, validate_config
from tune.recipes.config.schema import to_container
from tune.recipes.quantize.checks import quantize_device_type
from tune.recipes.quantize.config import QuantizeConfig
from tune.recipes.quantize.export import pick_weights_file, write_quantized_checkpoint

logger = logging.getLogger(__name__)


def preflight(cfg: QuantizeConfig) -> list[str]:
    """Check the scheme against the device, dtype and every chosen layer; no weight is read.

    Args:
        cfg: a quantize config.

    Returns:
        Native names of the linear layers that will be quantized.

    Raises:
        UnsupportedSchemeError: the scheme cannot run on the device/dtype, a chosen layer's
            shape does not fit it, or the tied LM head would be quantized.
        ValueError: a model family whose HF tensors are fused (no one-to-one key names).
        OutputOverlapsInputError: ``output_dir`` is, contains or lies inside an input.
    """
    check_output_apart(cfg.output_dir, dict(model_inputs(to_container(cfg))))
    q = cfg.quantization
    device_type = quantize_device_type(cfg.device)
    check_scheme_supported(q.scheme, device_type, DTYPES[cfg.model.dtype])
    skeleton = model_from_checkpoint_dir(cfg.model.checkpoint_dir, device="meta")
    if not skeleton.keys_one_to_one:
        raise ValueError(
            f"{cfg.model.checkpoint_dir}: {skeleton.config.model_type} checkpoints fuse tensors "
            "(no one-to-one HF names), which a quantized directory cannot store"
        )
    fqns = select_linear_modules(skeleton.model, q.include, q.exclude)
    group = get_scheme(q.scheme).group_size
    modules = dict(skeleton.model.named_modules())
    for fqn in fqns:
        in_features = modules[fqn].in_features
        if group is not None and in_features % group != 0:
            raise UnsupportedSchemeError(
                f"{cfg.model.checkpoint_dir}: layer {fqn!r} has in_features={in_features}, scheme "
                f"{q.scheme!r} needs a multiple of {group}; add it to quantization.exclude"
            )
    if getattr(skeleton.model, "tie_word_embeddings", False) and "output" in fqns:
        raise UnsupportedSchemeError(
            f"{cfg.model.checkpoint_dir} ties the LM head to the embeddings: quantizing 'output' "
            "would untie them; keep 'output' in quantization.exclude"
        )
    return fqns


def run(config: QuantizeConfig) -> dict[str, Any]:
    """Quantize ``config.model`` and write ``config.output_dir``.

    Args:
        config: a validated quantize config.

    Returns:
        ``output_dir``, ``quantized_modules`` (native names), ``weights_file``, ``hf_loadable``,
        ``float_bytes`` and ``quantized_bytes`` (model storage before and after).
    """
    cfg = config
    validate_config(cfg, ValidationContext(world_size=1))
    planned = preflight(cfg)
    rt = start_runtime(cfg.device, cfg.model.dtype)
    try:
        if rt.dist.is_distributed:
            raise RuntimeError(
                "the quantize recipe runs in one process; launch it without torchrun flags"
            )
        return _quantize(cfg, rt, planned)
    finally:
        stop_runtime()


def _quantize(cfg: QuantizeConfig, rt: Any, planned: list[str]) -> dict[str, Any]:
    q = cfg.quantization
    # ---- model: checkpoint, adapter merged into the float weights ---------------------------
    loaded = load_generation_model(
        cfg.model.checkpoint_dir,
        dtype=rt.dtype,
        device=rt.device,
        adapter_dir=cfg.model.adapter_dir,
        merge_adapter=cfg.model.adapter_dir is not None,
    )
    ckpt = loaded.checkpoint
    float_bytes = model_storage_bytes(ckpt.model)

    # ---- quantize -------------------------------------------------------------------------
    quantized = quantize_model(ckpt.model, q.scheme, include=q.include, exclude=q.exclude)
    if sorted(quantized) != sorted(planned):  # the preflight and the loaded model must agree
        raise RuntimeError(f"quantized {quantized}, but the preflight planned {planned}")
    quantized_bytes = model_storage_bytes(ckpt.model)

    # ---- write ------------------------------------------------------------------------------
    manifest = QuantizationManifest(
        scheme=q.scheme,
        device_type=rt.device.type,
        dtype=cfg.model.dtype,
        weights_file=pick_weights_file(cfg.weights_format, q.scheme, rt.device.type),
        quantized_modules=quantized,
        source=str(Path(cfg.model.checkpoint_dir).expanduser().resolve()),
    )
    out = write_quantized_checkpoint(
        ckpt, source_dir=cfg.model.checkpoint_dir, output_dir=cfg.output_dir, manifest=manifest
    )
    line = (
        f"quantized {len(quantized)} linear layers with {q.scheme}: {float_bytes / 2**20:.2f} MiB "
        f"-> {quantized_bytes / 2**20:.2f} MiB; wrote {out} ({manifest.weights_file}"
        f"{', loadable by transformers' if manifest.hf_loadable else ''})"
    )
    sys.stdout.write(line + "\n")
    return {
        "output_dir": out,
        "quantized_modules": quantized,
        "weights_file": manifest.weights_file,
        "hf_loadable": manifest.hf_loadable,
        "float_bytes": float_bytes,
        "quantized_bytes": quantized_bytes,
    }
