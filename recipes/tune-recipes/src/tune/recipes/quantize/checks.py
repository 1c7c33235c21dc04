"""``QuantizeConfig.validate``: paths and whether the scheme runs there, before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import Checks, ValidationContext

if TYPE_CHECKING:
    from tune.recipes.quantize.config import QuantizeConfig

# torchao 0.18 has no safetensors form for the CPU int4 packing (see tune-quant's docs).
NO_SAFETENSORS = {("int4_weight_only", "cpu")}


def quantize_device_type(device: str) -> str:
    """The device type a ``device`` setting resolves to (``auto``: CUDA when available)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _check_paths(cfg: QuantizeConfig, c: Checks) -> None:
    ckpt = cfg.model.checkpoint_dir
    if c.path_exists("model.checkpoint_dir", ckpt, "dir"):
        root = Path(ckpt).expanduser()
        c.require(
            (root / "config.json").is_file(),
            "model.checkpoint_dir",
            f"{ckpt} has no config.json (expected an HF checkpoint directory)",
        )
        c.require(
            any(root.glob("*.safetensors")),
            "model.checkpoint_dir",
            f"{ckpt} has no *.safetensors weights (an already quantized directory cannot be "
            "quantized again)",
        )
    adapter = cfg.model.adapter_dir
    if adapter is not None and c.path_exists("model.adapter_dir", adapter, "dir"):
        c.require(
            (Path(adapter).expanduser() / "adapter_config.json").is_file(),
            "model.adapter_dir",
            f"{adapter} has no adapter_config.json (expected a PEFT adapter directory)",
        )
    out = Path(cfg.output_dir).expanduser()
    if not c.require(bool(cfg.output_dir), "output_dir", "must name a directory"):
        return
    if out.exists():
        c.require(out.is_dir(), "output_dir", f"{out} exists and is not a directory")
        c.require(
            not out.is_dir() or not any(out.iterdir()),
            "output_dir",
            f"{out} is not empty; choose a new directory (nothing is overwritten)",
        )
    if ckpt and out.resolve() == Path(ckpt).expanduser().resolve():
        c.error("output_dir", "must differ from model.checkpoint_dir")


def _check_scheme(cfg: QuantizeConfig, c: Checks) -> None:
    from tune.quant import UnsupportedSchemeError, check_scheme_supported

    scheme = cfg.quantization.scheme
    device_type = quantize_device_type(cfg.device)
    dtype = getattr(torch, cfg.model.dtype)
    try:
        check_scheme_supported(scheme, device_type, dtype)
    except UnsupportedSchemeError as err:
        if device_type == "cuda" and not torch.cuda.is_available() and "not available" in str(err):
            # A GPU config validated on a machine without one: the run itself fails first thing.
            c.warn("device", f"{err}; the run needs a CUDA machine")
        else:
            c.error("quantization.scheme", str(err))
    if cfg.weights_format == "safetensors" and (scheme, device_type) in NO_SAFETENSORS:
        c.error(
            "weights_format",
            f"torchao cannot write scheme {scheme!r} on {device_type} to safetensors; use "
            "weights_format=pt (or auto)",
        )
    for i, pattern in enumerate(cfg.quantization.include or []):
        c.require(bool(pattern), f"quantization.include.{i}", "must not be empty")


def check_quantize_config(cfg: QuantizeConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of a quantize config (errors and warnings)."""
    checks = Checks(context)
    for step in (_check_paths, _check_scheme):
        step(cfg, checks)
    return checks.issues
