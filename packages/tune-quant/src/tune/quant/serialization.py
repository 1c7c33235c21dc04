"""Saving and loading quantized state dicts: torch.save (weights_only load) or torchao safetensors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from tune.quant.ptq import is_quantized_weight

__all__ = [
    "load_quantized",
    "load_quantized_state_dict",
    "save_quantized",
    "to_safetensors_format",
]

logger = logging.getLogger(__name__)

# torchao's prototype safetensors support lists the tensor subclasses it can flatten.
_SAFETENSORS_SUFFIX = ".safetensors"


def _safetensors_allowed() -> list[str]:
    from torchao.prototype.safetensors.safetensors_utils import ALLOWED_TENSORS_SUBCLASSES

    return list(ALLOWED_TENSORS_SUBCLASSES)


def to_safetensors_format(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten a quantized state dict into plain tensors plus torchao's JSON metadata.

    This is the layout transformers' torchao integration reads (``model.safetensors`` whose
    metadata has ``tensor_names`` and one JSON entry per tensor).

    Args:
        state_dict: name -> tensor, plain or torchao quantized.

    Raises:
        ValueError: a tensor's subclass has no safetensors form in the installed torchao,
            naming the key and class (save with a ``.pt`` path instead).
    """
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    allowed = _safetensors_allowed()
    for key, tensor in state_dict.items():
        if type(tensor) is not torch.Tensor and type(tensor).__name__ not in allowed:
            raise ValueError(
                f"tensor {key!r} is a {type(tensor).__name__}, which torchao cannot write to "
                f"safetensors (supported: {allowed}); save to a '.pt' path instead"
            )
    plain: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        value = tensor.detach()
        if type(value) is torch.Tensor:
            # safetensors rejects shared storage (tied weights): copy all but the first user.
            ptr = value.untyped_storage().data_ptr()
            value = value.clone() if ptr in seen else value.contiguous()
            seen.add(ptr)
        plain[key] = value
    return flatten_tensor_state_dict(plain)


def save_quantized(
    model_or_state_dict: nn.Module | dict[str, torch.Tensor], path: str | Path
) -> Path:
    """Write a quantized state dict to ``path`` (``.safetensors`` or ``.pt``), atomically.

    Args:
        model_or_state_dict: a model (its ``state_dict()`` is saved) or a state dict.
        path: target file; ``.safetensors`` uses torchao's flattened layout, anything else
            ``torch.save``.

    Returns:
        The path written.
    """
    path = Path(path)
    state_dict = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == _SAFETENSORS_SUFFIX:
        try:
            from safetensors.torch import save_file
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "saving to .safetensors needs the safetensors package (a tune-quant dependency): pip install safetensors"
            ) from err
        tensors, metadata = to_safetensors_format(state_dict)
        save_file(tensors, str(tmp), metadata=metadata)
    else:
        torch.save(dict(state_dict), tmp)
    os.replace(tmp, path)
    n_quantized = sum(is_quantized_weight(t) for t in state_dict.values())
    logger.info("saved %d tensors (%d quantized) to %s", len(state_dict), n_quantized, path)
    return path


def load_quantized_state_dict(
    path: str | Path, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a state dict written by ``save_quantized`` without unpickling arbitrary objects.

    Args:
        path: a ``.safetensors`` file with torchao metadata, or a ``torch.save`` file
            (read with ``weights_only=True``; torchao registers its tensor classes as safe).
        device: where to put the tensors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a safetensors file without torchao metadata, or leftover tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no quantized checkpoint at {path}")
    if path.suffix != _SAFETENSORS_SUFFIX:
        import torchao.quantization  # noqa: F401  (registers the tensor subclasses as safe globals)

        return torch.load(path, map_location=device, weights_only=True)
    from safetensors import safe_open
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from torchao.prototype.safetensors.safetensors_utils import is_metadata_torchao

    with safe_open(str(path), framework="pt", device=str(torch.device(device))) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if not is_metadata_torchao(metadata):
        raise ValueError(
            f"{path} has no torchao metadata (expected a 'tensor_names' entry listing "
            f"{json.dumps(sorted(tensors)[:3])}...); it was not written by save_quantized"
        )
    state_dict, leftover = unflatten_tensor_state_dict(tensors, metadata)
    if leftover:
        raise ValueError(f"{path}: tensors {sorted(leftover)} are not described by its metadata")
    return state_dict


def load_quantized(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a quantized checkpoint into a float (or meta-device) model skeleton.

    The model's Linear weights are replaced by the checkpoint's tensors (``assign=True``), so the
    skeleton need not be quantized first; build it under ``torch.device("meta")`` to skip init.

    Args:
        model: the same architecture as the saved model, before quantization.
        path: file written by ``save_quantized``.
        strict: require the keys to match exactly.
        device: where the loaded tensors go (the model's parameters are replaced by them).

    Returns:
        ``model``, holding the loaded tensors; quantized weights have ``requires_grad=False``.

    Raises:
        RuntimeError: missing or unexpected keys when ``strict``, or a shape mismatch.
    """
    state_dict = load_quantized_state_dict(path, device)
    model.load_state_dict(state_dict, strict=strict, assign=True)
    for param in model.parameters():
        if is_quantized_weight(param):
            param.requires_grad_(False)
    return model
