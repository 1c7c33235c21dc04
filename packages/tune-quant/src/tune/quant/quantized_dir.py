"""A quantized model as a directory: weights, ``config.json``, side files and a manifest.

One format, written by ``save_quantized_dir`` and read by ``load_quantized_dir``:

- ``model.safetensors`` (torchao's flattened layout, what transformers reads) or ``model.pt``
  (``torch.save``, read with ``weights_only=True``): the state dict under the names ``key_map``
  gives (HF names for an HF model). ``weights_format="auto"`` picks safetensors unless torchao has
  no safetensors form for one of the tensors (the CPU int4 packing in torchao 0.18);
- ``config.json`` when one is given or found in ``source_dir``: ``dtype`` set to the float dtype
  and, with safetensors, torchao's ``quantization_config`` (``modules_to_not_convert`` = the float
  Linear layers) so that ``transformers`` loads the directory quantized (``hf_loadable``);
- the other non-weight files of ``source_dir`` (tokenizer, generation config), copied;
- ``tune_quantization.json``, the manifest (``QuantizationManifest``)::

      {"scheme": "int8_weight_only", "device_type": "cpu", "dtype": "float32",
       "weights_file": "model.safetensors", "quantized_modules": ["layers.0.attn.q_proj", ...],
       "source": "/abs/path/of/the/source", "hf_loadable": true, "version": 1}

The directory is written aside and renamed into place. Loading checks the manifest first (device
type, dtype, scheme support, a ``weights_file`` that stays inside the directory through symlinks)
and reads no weight when it does not fit::

    save_quantized_dir("out", model, scheme="int8_weight_only", dtype=torch.float32)
    with torch.device("meta"):
        skeleton = build_model()
    manifest = load_quantized_dir("out", skeleton, device="cpu")  # eval mode, frozen
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.quant.hf_config import hf_quantization_config
from tune.quant.ptq import is_quantized_weight
from tune.quant.schemes import check_scheme_supported, get_scheme
from tune.quant.serialization import (
    _safetensors_allowed,
    load_quantized_state_dict,
    save_quantized,
)

__all__ = [
    "MANIFEST_VERSION",
    "QUANTIZATION_MANIFEST",
    "QuantizationManifest",
    "QuantizedDirError",
    "check_quantized_dir",
    "is_quantized_dir",
    "load_quantized_dir",
    "read_quantization_manifest",
    "save_quantized_dir",
]

logger = logging.getLogger(__name__)

QUANTIZATION_MANIFEST = "tune_quantization.json"
MANIFEST_VERSION = 1
WEIGHTS_FORMATS = ("auto", "safetensors", "pt")
# Files of source_dir never copied: weights (replaced), their indexes and adapters (merged).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
_SKIPPED = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "adapter_config.json"}

KeyMap = Callable[[str], str]


class QuantizedDirError(ValueError):
    """A quantized directory that cannot be written or loaded as asked (names file, key, reason)."""


@dataclass
class QuantizationManifest:
    """What ``tune_quantization.json`` records about a quantized directory.

    Args:
        scheme: the tune-quant scheme.
        device_type: where the weights were quantized (``cpu``, ``cuda``); the packed layouts of
            some schemes only run there.
        dtype: the float dtype of the unquantized tensors and of the activations (``float32``).
        weights_file: ``model.safetensors`` or ``model.pt``, relative to the directory.
        quantized_modules: model (not key-mapped) names of the quantized Linear layers.
        source: the directory the model came from (absolute), or ``""``.
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


def is_quantized_dir(directory: str | Path) -> bool:
    """True when ``directory`` holds a ``tune_quantization.json`` manifest."""
    return (Path(directory).expanduser() / QUANTIZATION_MANIFEST).is_file()


def read_quantization_manifest(directory: str | Path) -> QuantizationManifest | None:
    """The manifest of a quantized directory, or None for any other directory.

    Raises:
        QuantizedDirError: a malformed manifest (naming the file and field) or a newer format.
    """
    path = Path(directory).expanduser() / QUANTIZATION_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = QuantizationManifest(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise QuantizedDirError(f"{path}: not a valid quantization manifest ({err})") from err
    if not isinstance(manifest.version, int) or manifest.version > MANIFEST_VERSION:
        raise QuantizedDirError(
            f"{path}: version {manifest.version!r} is newer than this tune-quant reads "
            f"({MANIFEST_VERSION}); upgrade tune-quant"
        )
    for name in ("scheme", "device_type", "dtype", "weights_file"):
        if not isinstance(getattr(manifest, name), str) or not getattr(manifest, name):
            raise QuantizedDirError(
                f"{path}: {name} must be a non-empty string, got {getattr(manifest, name)!r}"
            )
    return manifest


def _contained(root: Path, name: str, manifest_path: Path) -> Path:
    """``root / name``, refusing a name that is not plain or resolves (symlinks) outside ``root``."""
    if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name or "\x00" in name:
        raise QuantizedDirError(
            f"{manifest_path}: weights_file {name!r} must be a plain relative name inside "
            f"{root} (no '..', no leading '/', no backslash)"
        )
    real_root, resolved = root.resolve(), (root / name).resolve()
    inside = resolved.is_relative_to(real_root)
    # A hub cache snapshot (.../snapshots/<rev>/) links every file into the repository's blobs/.
    blobs = real_root.parent.parent / "blobs"
    if not inside and real_root.parent.name == "snapshots" and blobs.is_dir():
        inside = resolved.is_relative_to(blobs.resolve())
    if not inside:
        raise QuantizedDirError(
            f"{manifest_path}: weights_file {name!r} resolves to {resolved}, outside the "
            f"directory {real_root}; refusing to read it"
        )
    return root / name


def check_quantized_dir(
    directory: str | Path, *, device: str | torch.device, dtype: torch.dtype | None = None
) -> QuantizationManifest:
    """Fail before any weight is read when ``directory`` cannot run on ``device`` in ``dtype``.

    Args:
        directory: a directory written by ``save_quantized_dir``.
        device: where the caller wants the model.
        dtype: the float dtype the caller wants (None: the manifest's).

    Returns:
        The manifest.

    Raises:
        QuantizedDirError: no or a malformed manifest, another device type or dtype than
            quantized for, a ``weights_file`` outside the directory or missing.
        UnsupportedSchemeError: the scheme cannot run on ``device`` at all.
    """
    root = Path(directory).expanduser()
    manifest_path = root / QUANTIZATION_MANIFEST
    manifest = read_quantization_manifest(root)
    if manifest is None:
        raise QuantizedDirError(
            f"{root} has no {QUANTIZATION_MANIFEST}: not a quantized directory (written by "
            "save_quantized_dir, e.g. `tune run quantize`)"
        )
    device_type = torch.device(device).type
    if device_type != manifest.device_type:
        raise QuantizedDirError(
            f"{manifest_path}: scheme {manifest.scheme!r} was quantized for device "
            f"{manifest.device_type!r} (its packed layout runs there only), asked for "
            f"{device_type!r}; quantize again on {device_type}"
        )
    stored = getattr(torch, manifest.dtype, None)
    if not isinstance(stored, torch.dtype) or not stored.is_floating_point:
        raise QuantizedDirError(f"{manifest_path}: dtype {manifest.dtype!r} is no float dtype")
    if dtype is not None and dtype != stored:
        raise QuantizedDirError(
            f"{manifest_path}: the weights were quantized from {manifest.dtype}, asked for "
            f"{str(dtype).removeprefix('torch.')}; load it in {manifest.dtype}"
        )
    check_scheme_supported(manifest.scheme, device, stored)
    weights = _contained(root, manifest.weights_file, manifest_path)
    if not weights.is_file():
        raise QuantizedDirError(
            f"{manifest_path}: weights_file {manifest.weights_file!r} is missing"
        )
    return manifest


def _safetensors_writable(state: Mapping[str, torch.Tensor]) -> bool:
    allowed = _safetensors_allowed()
    return all(type(t) is torch.Tensor or type(t).__name__ in allowed for t in state.values())


def _copy_side_files(source: Path, target: Path) -> None:
    """Copy ``source``'s files except weights, indexes, adapters, config.json and a manifest."""
    for path in sorted(source.iterdir()):
        if (
            path.is_file()
            and not path.name.endswith(_WEIGHT_SUFFIXES)
            and path.name not in {*_SKIPPED, "config.json", QUANTIZATION_MANIFEST}
        ):
            shutil.copy2(path, target / path.name)


def _hf_config(
    config: Mapping[str, Any], manifest: QuantizationManifest, float_linears: list[str], qat: bool
) -> dict[str, Any]:
    """``config`` with ``dtype`` and, where transformers can load the weights, torchao's entry."""
    content = {**config, "dtype": manifest.dtype}
    if "torch_dtype" in content:  # older transformers spelling
        content["torch_dtype"] = manifest.dtype
    if not manifest.weights_file.endswith(".safetensors"):
        return content
    support = get_scheme(manifest.scheme).devices.get(manifest.device_type)
    try:
        if support is None:
            raise ValueError(f"no config for device {manifest.device_type!r}")
        ao_config = support.qat_convert_config() if qat else support.ptq_config()
        content["quantization_config"] = hf_quantization_config(
            ao_config, modules_to_not_convert=float_linears
        )
        manifest.hf_loadable = True
    except ValueError as err:
        logger.warning("no transformers quantization_config for %s: %s", manifest.scheme, err)
    return content


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():  # empty, or a quantized directory the caller may overwrite
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def save_quantized_dir(
    directory: str | Path,
    model: nn.Module,
    *,
    scheme: str,
    dtype: torch.dtype,
    key_map: KeyMap | None = None,
    source_dir: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    weights_format: str = "auto",
    qat: bool = False,
    overwrite: bool = False,
) -> QuantizationManifest:
    """Write a quantized ``model`` as a directory (see the module docstring), atomically.

    Args:
        directory: the new directory; absent or empty unless ``overwrite``.
        model: a model whose chosen Linear weights are quantized (``quantize_model`` or
            ``convert_qat``); every other Linear is recorded as left in float.
        scheme: the tune-quant scheme the weights were quantized with.
        dtype: float dtype of the tensors left unquantized (cast to it) and of the activations.
        key_map: model name -> stored name for every state-dict key (e.g. native -> HF), applied
            to module names too (``<name>.weight``); None keeps the names.
        source_dir: the directory the model came from: its ``config.json`` (unless ``config``)
            and other non-weight files (tokenizer, generation config) are written along.
        config: the ``config.json`` content (None: ``source_dir``'s, or no ``config.json``).
        weights_format: ``auto`` (safetensors when torchao can flatten every tensor, else
            ``pt``), ``safetensors`` or ``pt``.
        qat: the weights come from ``convert_qat``: ``config.json`` records the scheme's QAT
            convert config (same numerics as its fake quantization) instead of its PTQ config.
        overwrite: replace an existing quantized directory (one holding a manifest).

    Returns:
        The manifest written (``hf_loadable`` set).

    Raises:
        QuantizedDirError: no quantized Linear in ``model``, or two keys mapped to one name.
        FileExistsError: ``directory`` is not empty (and not an overwritable quantized one).
        ValueError: an unknown ``weights_format`` or scheme, or ``safetensors`` for a tensor
            torchao cannot write there (naming the key).
    """
    if weights_format not in WEIGHTS_FORMATS:
        raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, got {weights_format!r}")
    get_scheme(scheme)
    out = Path(directory).expanduser()
    in_use = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if in_use and not (overwrite and is_quantized_dir(out)):
        raise FileExistsError(
            f"{out} exists and is not empty; choose a new directory (nothing is overwritten"
            f"{'' if not overwrite else ' but a quantized directory'})"
        )
    name_of = key_map or (lambda key: key)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        value = tensor.detach()
        if type(value) is torch.Tensor and value.is_floating_point():
            value = value.to(dtype)
        name = name_of(key)
        if name in state:
            raise QuantizedDirError(f"key_map sends two state-dict keys to {name!r} (one: {key!r})")
        state[name] = value
    linears = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantized = [fqn for fqn, m in linears if is_quantized_weight(m.weight)]
    in_float = [fqn for fqn, m in linears if not is_quantized_weight(m.weight)]
    if not quantized:
        raise QuantizedDirError(
            f"{out}: no nn.Linear of {type(model).__name__} holds a quantized weight; quantize "
            "it first (quantize_model or convert_qat)"
        )
    float_linears = [name_of(f"{fqn}.weight").removesuffix(".weight") for fqn in in_float]
    if weights_format == "auto":
        weights_format = "safetensors" if _safetensors_writable(state) else "pt"
    manifest = QuantizationManifest(
        scheme=scheme,
        device_type=model.get_parameter(f"{quantized[0]}.weight").device.type,
        dtype=str(dtype).removeprefix("torch."),
        weights_file=f"model.{weights_format}",
        quantized_modules=quantized,
        source="" if source_dir is None else str(Path(source_dir).expanduser().resolve()),
    )
    source = None if source_dir is None else Path(source_dir).expanduser()
    if config is None and source is not None and (source / "config.json").is_file():
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, uniquely named scratch directory (never an existing one: it could be an input).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is a normal directory
        if source is not None:
            _copy_side_files(source, tmp)
        save_quantized(state, tmp / manifest.weights_file)
        if config is not None:
            content = _hf_config(config, manifest, float_linears, qat)
            text = json.dumps(content, indent=2, sort_keys=True) + "\n"
            (tmp / "config.json").write_text(text, encoding="utf-8")
        manifest.write(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s: %d layers quantized with %s", out, len(quantized), scheme)
    return manifest


def load_quantized_dir(
    directory: str | Path,
    model: nn.Module,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    key_map: KeyMap | None = None,
) -> QuantizationManifest:
    """Load a directory written by ``save_quantized_dir`` into a float (or meta) skeleton.

    The stored tensors replace the model's (``assign=True``), so build the skeleton under
    ``torch.device("meta")`` to skip initialisation; it ends frozen, in eval mode.

    Args:
        directory: the quantized directory.
        model: the architecture saved, unquantized (any device, meta included).
        device: where the tensors go; must be of the device type quantized for.
        dtype: the float dtype wanted; must be the manifest's (None: not checked).
        key_map: stored name -> model name for every key (e.g. HF -> native); None keeps them.

    Returns:
        The manifest.

    Raises:
        QuantizedDirError: see ``check_quantized_dir``; a stored name ``key_map`` cannot map, or
            tensors that do not fit ``model`` (naming the weights file and the keys).
    """
    root = Path(directory).expanduser()
    manifest = check_quantized_dir(root, device=device, dtype=dtype)
    path = root / manifest.weights_file
    name_of = key_map or (lambda key: key)
    state = {}
    for key, tensor in load_quantized_state_dict(path, device).items():
        try:
            state[name_of(key)] = tensor
        except KeyError as err:
            raise QuantizedDirError(
                f"{path}: tensor {key!r} has no name in the model ({err})"
            ) from None
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise QuantizedDirError(
            f"{path}: its tensors do not fit the {type(model).__name__} given: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    logger.info("loaded %s (%s, %d layers)", root, manifest.scheme, len(manifest.quantized_modules))
    return manifest
