"""After quantization-aware training: convert the fake-quantized model and write it quantized.

The written directory is an HF directory whose ``model.safetensors`` holds torchao's flattened
quantized tensors under HF key names, with ``quantization_config`` in ``config.json`` (as
transformers' ``TorchAoConfig`` writes it), the base's tokenizer and generation files, and
``tune_quantization.json`` (the manifest of the ``quantize`` recipe's directories).
``load_quantized_output`` reads it back into a native model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tune.checkpoint import write_hf_metadata
from tune.dist import gather_full_state_dict
from tune.models import CheckpointModel, model_from_checkpoint_dir
from tune.peft import LoraConfig, lora_modules, merge_and_unload
from tune.quant import (
    convert_qat,
    get_scheme,
    hf_quantization_config,
    load_quantized_state_dict,
    prepare_qat,
    qat_prepared_modules,
    save_quantized,
    write_hf_quantization_config,
)
from tune.recipes.common.finetune_method import prepare_for_method
from tune.recipes.common.model_loading import load_pretrained

logger = logging.getLogger(__name__)

QUANTIZED_WEIGHTS = "model.safetensors"
QUANTIZATION_MANIFEST = "tune_quantization.json"


def _merge_adapters(model: nn.Module) -> None:
    if lora_modules(model):
        merge_and_unload(model)


def _rebuild_on_main(
    state: dict[str, torch.Tensor],
    base_dir: Path,
    *,
    scheme: str,
    exclude: Sequence[str],
    method: str,
    lora: LoraConfig | None,
    dtype: torch.dtype,
) -> nn.Module:
    """A plain prepared model holding the gathered weights of a sharded run (rank 0 only)."""
    plain = load_pretrained(base_dir, dtype=dtype, device=torch.device("cpu")).model
    prepare_for_method(plain, method, lora)
    prepare_qat(plain, scheme, exclude=list(exclude))
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or (lora is None and missing):
        raise ValueError(
            f"gathered QAT weights do not fit the rebuilt model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return plain


def write_quantized_output(
    out_dir: Path,
    model: nn.Module,
    ckpt: CheckpointModel,
    base_dir: Path,
    *,
    scheme: str,
    exclude: Sequence[str] = ("output",),
    method: str = "full",
    lora: LoraConfig | None = None,
    dtype: torch.dtype = torch.float32,
    is_main: bool = True,
    distributed: bool = False,
) -> dict[str, str]:
    """Convert a QAT-trained model (in place) and write ``out_dir/quantized``; returns its path.

    Call it after every float output is written: conversion replaces the float Linear weights
    by quantized tensors. Active LoRA adapters are merged into the float weights first.

    Args:
        out_dir: the run directory.
        model: the trained model, prepared by ``tune.quant.prepare_qat`` (possibly sharded).
        ckpt: the base checkpoint's model and key maps.
        base_dir: the base checkpoint directory (config, tokenizer and generation files).
        scheme: the tune-quant scheme the model was prepared with.
        exclude: module-name patterns left in float (as given to ``prepare_qat``).
        method: ``full`` or an adapter method (to rebuild the model of a sharded run).
        lora: the adapter settings (adapter methods).
        dtype: dtype of the weights that stay in float (norms, embeddings, ``output``).
        is_main: this is rank 0 (the only rank that writes).
        distributed: the model is sharded (collective: every rank must call).

    Returns:
        ``{"quantized_dir": path}`` on rank 0, ``{}`` on the other ranks.

    Raises:
        ValueError: no module of ``model`` carries fake quantization (e.g. adapters injected
            after ``prepare_qat`` replaced the prepared layers), or a checkpoint family whose HF
            keys fuse native tensors (Phi-3).
    """
    if not ckpt.keys_one_to_one:
        raise ValueError(
            f"{base_dir}: this family fuses tensors in its HF checkpoint; a quantized export "
            "needs one HF tensor per native tensor"
        )
    if distributed:
        state = gather_full_state_dict(model)
        if not is_main:
            return {}
        model = _rebuild_on_main(
            state, base_dir, scheme=scheme, exclude=exclude, method=method, lora=lora, dtype=dtype
        )
    prepared = qat_prepared_modules(model)
    if not prepared:
        raise ValueError(
            f"qat.scheme={scheme!r}: no layer of the trained model carries fake quantization; "
            "prepare_qat must run after adapters are injected (adapters replace the prepared "
            "Linear layers)"
        )
    if set(prepared.values()) != {scheme}:
        raise ValueError(
            f"model was prepared with {sorted(set(prepared.values()))}, not {scheme!r}"
        )
    converted = convert_qat(model, merge_adapters=_merge_adapters)
    directory = Path(out_dir) / "quantized"
    directory.mkdir(parents=True, exist_ok=True)
    hf_state = ckpt.native_to_hf({k: v.detach() for k, v in model.state_dict().items()})
    hf_state = {
        k: v.to(dtype) if type(v) is torch.Tensor and v.is_floating_point() else v
        for k, v in hf_state.items()
    }
    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    write_hf_metadata(directory, weights_dtype=dtype, config=config, source_dir=base_dir)
    save_quantized(hf_state, directory / QUANTIZED_WEIGHTS)
    float_linears = [
        ckpt.native_to_hf_key(f"{fqn}.weight").removesuffix(".weight")
        for fqn, module in model.named_modules()
        if isinstance(module, nn.Linear) and fqn not in converted
    ]
    device_type = next(iter(hf_state.values())).device.type
    convert_config = get_scheme(scheme).devices[device_type].qat_convert_config()
    write_hf_quantization_config(
        directory, hf_quantization_config(convert_config, modules_to_not_convert=float_linears)
    )
    # The manifest of the `quantize` recipe's directories (same fields), so that loaders of
    # quantized directories (generate) read a QAT output the same way.
    manifest = {
        "scheme": scheme,
        "device_type": device_type,
        "dtype": str(dtype).removeprefix("torch."),
        "weights_file": QUANTIZED_WEIGHTS,
        "quantized_modules": sorted(converted),
        "source": str(Path(base_dir).expanduser().resolve()),
        "hf_loadable": True,
        "version": 1,
    }
    (directory / QUANTIZATION_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("QAT: converted %d layers (%s), wrote %s", len(converted), scheme, directory)
    return {"quantized_dir": str(directory)}


def load_quantized_output(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The native model of a directory written by ``write_quantized_output`` (eval mode).

    Args:
        directory: the ``quantized`` directory.
        device: where the tensors go.
    """
    directory = Path(directory)
    skeleton = model_from_checkpoint_dir(directory, device="meta")
    state = skeleton.hf_to_native(load_quantized_state_dict(directory / QUANTIZED_WEIGHTS, device))
    skeleton.model.load_state_dict(state, strict=True, assign=True)
    skeleton.model.init_buffers(torch.device(device))
    skeleton.model.requires_grad_(False)
    return skeleton.model.eval()
