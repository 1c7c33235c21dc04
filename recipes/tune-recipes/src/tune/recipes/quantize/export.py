"""Write a quantized model as a directory: weights under HF names, config, tokenizer, manifest."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from tune.models import CheckpointModel
from tune.quant import hf_quantization_config, save_quantized, write_hf_quantization_config
from tune.recipes.common.quantize_loading import QUANTIZATION_MANIFEST, QuantizationManifest
from tune.recipes.quantize.checks import NO_SAFETENSORS

logger = logging.getLogger(__name__)

# Files of the source directory that are weights (replaced) or adapters (merged), never copied.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SKIPPED_NAMES = {
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
}


def _side_files(source: Path) -> list[Path]:
    """Config, tokenizer and generation files of ``source`` (everything but weights)."""
    return sorted(
        p
        for p in source.iterdir()
        if p.is_file()
        and not p.name.endswith(_WEIGHT_SUFFIXES)
        and p.name not in _SKIPPED_NAMES
        and p.name != QUANTIZATION_MANIFEST
    )


def _float_linear_hf_names(ckpt: CheckpointModel, quantized: set[str]) -> list[str]:
    """HF module names of the linear layers left in float (transformers' modules_to_not_convert)."""
    return [
        ckpt.native_to_hf_key(f"{fqn}.weight").removesuffix(".weight")
        for fqn, module in ckpt.model.named_modules()
        if isinstance(module, nn.Linear) and fqn not in quantized
    ]


def pick_weights_file(weights_format: str, scheme: str, device_type: str) -> str:
    """``model.safetensors`` or ``model.pt`` for a ``weights_format`` setting."""
    if weights_format == "auto":
        weights_format = "pt" if (scheme, device_type) in NO_SAFETENSORS else "safetensors"
    return f"model.{weights_format}"


def write_quantized_checkpoint(
    ckpt: CheckpointModel,
    *,
    source_dir: str | Path,
    output_dir: str | Path,
    manifest: QuantizationManifest,
) -> Path:
    """Write ``ckpt.model`` (already quantized) and ``source_dir``'s side files to ``output_dir``.

    The directory is written aside and renamed into place, so a crash leaves no half directory.

    Args:
        ckpt: the quantized model and its key maps (one-to-one HF keys).
        source_dir: the directory the model was loaded from (config and tokenizer files).
        output_dir: the new directory (absent or empty).
        manifest: what was done; ``weights_file`` picks the format, ``hf_loadable`` is set here.

    Returns:
        ``output_dir``.
    """
    source, out = Path(source_dir).expanduser(), Path(output_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, uniquely named scratch directory: never one that already exists (it could be
    # anybody's, an input even).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    for path in _side_files(source):
        shutil.copy2(path, tmp / path.name)
    state = {ckpt.native_to_hf_key(k): v for k, v in ckpt.model.state_dict().items()}
    save_quantized(state, tmp / manifest.weights_file)
    manifest.hf_loadable = False
    if manifest.weights_file.endswith(".safetensors"):
        not_converted = _float_linear_hf_names(ckpt, set(manifest.quantized_modules))
        try:
            entry = hf_quantization_config(
                manifest.scheme, device=manifest.device_type, modules_to_not_convert=not_converted
            )
        except ValueError as err:
            logger.warning("no transformers quantization_config for %s: %s", manifest.scheme, err)
        else:
            write_hf_quantization_config(tmp / "config.json", entry)
            manifest.hf_loadable = True
    manifest.write(tmp)
    if out.exists():
        out.rmdir()  # validated empty
    os.replace(tmp, out)
    return out
