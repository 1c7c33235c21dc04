"""The quantized checkpoint directory written by the ``quantize`` recipe: its manifest and loading.

Layout: the source's ``config.json`` (with a torchao ``quantization_config`` where the scheme can
be exported), its tokenizer and generation files, the weights under HF key names in
``model.safetensors`` (torchao's flattened layout) or ``model.pt`` (read with
``weights_only=True``), and ``tune_quantization.json``: the manifest read here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tune.checkpoint import UnsafeCheckpointPathError, ensure_inside

if TYPE_CHECKING:
    from tune.models import CheckpointModel

# tune.models and tune.quant (torchao) are imported when loading, so that config validation,
# which only needs the manifest's name, stays light.

logger = logging.getLogger(__name__)

QUANTIZATION_MANIFEST = "tune_quantization.json"
MANIFEST_VERSION = 1


class QuantizedCheckpointError(ValueError):
    """A quantized directory that cannot be loaded as asked (names the file, key and reason)."""


@dataclass
class QuantizationManifest:
    """What ``tune_quantization.json`` records about a quantized directory.

    Args:
        scheme: the tune-quant scheme.
        device_type: where the weights were quantized (``cpu``, ``cuda``); the packed layouts
            of some schemes only run there.
        dtype: the float dtype of the unquantized tensors and of the activations.
        weights_file: ``model.safetensors`` or ``model.pt``.
        quantized_modules: native names of the quantized linear layers.
        source: the directory quantized.
        hf_loadable: whether ``config.json`` got a ``quantization_config`` for transformers.
        version: the manifest format version.
    """

    scheme: str
    device_type: str
    dtype: str
    weights_file: str
    quantized_modules: list[str] = field(default_factory=list)
    source: str = ""
    hf_loadable: bool = False
    version: int = MANIFEST_VERSION

    def write(self, directory: str | Path) -> Path:
        """Write the manifest into ``directory``; returns its path."""
        path = Path(directory) / QUANTIZATION_MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


def read_quantization_manifest(directory: str | Path) -> QuantizationManifest | None:
    """The manifest of a quantized directory, or None for a plain checkpoint directory.

    Raises:
        QuantizedCheckpointError: the manifest is malformed or of a newer format.
    """
    path = Path(directory).expanduser() / QUANTIZATION_MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = QuantizationManifest(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise QuantizedCheckpointError(
            f"{path}: not a valid quantization manifest ({err})"
        ) from err
    if manifest.version > MANIFEST_VERSION:
        raise QuantizedCheckpointError(
            f"{path}: version {manifest.version} is newer than this tune-recipes reads "
            f"({MANIFEST_VERSION}); upgrade tune-recipes"
        )
    return manifest


def is_quantized_checkpoint_dir(directory: str | Path) -> bool:
    """True when ``directory`` was written by the ``quantize`` recipe."""
    return (Path(directory).expanduser() / QUANTIZATION_MANIFEST).is_file()


def check_quantized_loadable(
    directory: str | Path, *, dtype: torch.dtype, device: torch.device | str
) -> QuantizationManifest:
    """Fail before any weight is read when the directory cannot run on ``device`` in ``dtype``.

    Args:
        directory: a directory written by the ``quantize`` recipe.
        dtype: the dtype the caller wants the model in.
        device: where the caller wants the model.

    Raises:
        QuantizedCheckpointError: no manifest, another device type or dtype than quantized for,
            or a missing weights file.
        UnsupportedSchemeError: the scheme cannot run on ``device`` at all.
    """
    from tune.quant import check_scheme_supported

    root = Path(directory).expanduser()
    manifest = read_quantization_manifest(root)
    if manifest is None:
        raise QuantizedCheckpointError(
            f"{root} has no {QUANTIZATION_MANIFEST}: not a directory written by `tune run quantize`"
        )
    device_type = torch.device(device).type
    if device_type != manifest.device_type:
        raise QuantizedCheckpointError(
            f"{root / QUANTIZATION_MANIFEST}: scheme {manifest.scheme!r} was quantized for "
            f"device {manifest.device_type!r} (its packed layout runs there only), asked for "
            f"{device_type!r}; quantize again with device={device_type}"
        )
    wanted = str(dtype).removeprefix("torch.")
    if wanted != manifest.dtype:
        raise QuantizedCheckpointError(
            f"{root / QUANTIZATION_MANIFEST}: the weights were quantized from {manifest.dtype}, "
            f"asked for {wanted}; set the model dtype to {manifest.dtype}"
        )
    check_scheme_supported(manifest.scheme, device, dtype)
    if not isinstance(manifest.weights_file, str) or not manifest.weights_file:
        raise QuantizedCheckpointError(
            f"{root / QUANTIZATION_MANIFEST}: weights_file must be a file name, "
            f"got {manifest.weights_file!r}"
        )
    try:
        ensure_inside(manifest.weights_file, root, f"weights_file of {QUANTIZATION_MANIFEST}")
    except UnsafeCheckpointPathError as err:
        raise QuantizedCheckpointError(f"{root / QUANTIZATION_MANIFEST}: {err}") from None
    if not (root / manifest.weights_file).is_file():
        raise QuantizedCheckpointError(
            f"{root / QUANTIZATION_MANIFEST}: weights_file {manifest.weights_file!r} is missing"
        )
    return manifest


def load_quantized_checkpoint(
    directory: str | Path, *, dtype: torch.dtype, device: torch.device | str
) -> tuple[CheckpointModel, QuantizationManifest]:
    """The quantized model of ``directory`` in eval mode (built on meta, tensors assigned).

    Args:
        directory: a directory written by the ``quantize`` recipe.
        dtype: float dtype; must be the one the directory was quantized from.
        device: where the tensors go; must be of the device type quantized for.

    Raises:
        QuantizedCheckpointError: see ``check_quantized_loadable``, or weights whose names do
            not match the model of ``config.json``.
    """
    from tune.models import model_from_checkpoint_dir
    from tune.quant import load_quantized_state_dict

    root = Path(directory).expanduser()
    manifest = check_quantized_loadable(root, dtype=dtype, device=device)
    ckpt = model_from_checkpoint_dir(root, device="meta", dtype=dtype)
    hf_state = load_quantized_state_dict(root / manifest.weights_file, device)
    state = {ckpt.hf_to_native_key(k): v for k, v in hf_state.items()}
    expected = set(ckpt.model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise QuantizedCheckpointError(
            f"{root / manifest.weights_file}: does not fit the model of {root / 'config.json'}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    ckpt.model.load_state_dict(state, strict=True, assign=True)
    ckpt.model.init_buffers(torch.device(device))
    ckpt.model.requires_grad_(False)
    ckpt.model.eval()
    logger.info(
        "loaded %s quantized with %s (%d layers) from %s",
        ckpt.config.model_type,
        manifest.scheme,
        len(manifest.quantized_modules),
        root,
    )
    return ckpt, manifest
