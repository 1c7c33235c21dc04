"""``QuantizeConfig.validate``: paths and whether the scheme runs there, before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tune.config import Checks
from tune.recipes.common.availability import TORCHAO, require_package
from tune.recipes.common.section_checks import check_adapter_dir, check_checkpoint_dir

if TYPE_CHECKING:
    from tune.recipes.quantize.config import QuantizeConfig


def quantize_device_type(device: str) -> str:
    """The device type a ``device`` setting resolves to (``auto``: CUDA when available)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _check_paths(cfg: QuantizeConfig, c: Checks) -> None:
    ckpt = cfg.model.checkpoint_dir
    note = " (an already quantized directory cannot be quantized again)"
    check_checkpoint_dir(c, "model.checkpoint_dir", ckpt, weights_note=note)
    check_adapter_dir(c, cfg.model.adapter_dir)
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
    if not require_package(c, "quantization.scheme", TORCHAO, "quantization"):
        return
    from tune.quant import SCHEMES, UnsupportedSchemeError, check_scheme_supported

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
    support = SCHEMES[scheme].devices.get(device_type) if scheme in SCHEMES else None
    if cfg.weights_format == "safetensors" and support is not None and not support.safetensors:
        c.error(
            "weights_format",
            f"torchao cannot write scheme {scheme!r} on {device_type} to safetensors; use "
            "weights_format=pt (or auto)",
        )
    for i, pattern in enumerate(cfg.quantization.include or []):
        c.require(bool(pattern), f"quantization.include.{i}", "must not be empty")


CHECKS = (_check_paths, _check_scheme)
