"""Load the model to generate or score with: a checkpoint directory, optionally + a PEFT adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tune.checkpoint import load_peft_adapter as read_peft_adapter_dir
from tune.data import Tokenizer
from tune.data.tokenizer import check_vocab_fits
from tune.models import CheckpointModel, model_from_checkpoint_dir
from tune.peft import load_peft_adapter, merge_and_unload
from tune.quant import QuantizationManifest, is_quantized_dir, load_quantized_dir, quantize_model
from tune.recipes.common.model_loading import load_pretrained

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The model ready for generation and what was applied to it.

    Args:
        checkpoint: the model and its key maps.
        adapted_modules: native names of the layers an adapter was loaded into.
        quantized_modules: native names of the quantized linear layers.
    """

    checkpoint: CheckpointModel
    adapted_modules: list[str] = field(default_factory=list)
    quantized_modules: list[str] = field(default_factory=list)


def load_quantized_checkpoint(
    directory: str | Path, *, dtype: torch.dtype, device: torch.device | str
) -> tuple[CheckpointModel, QuantizationManifest]:
    """The model of a ``tune.quant.save_quantized_dir`` directory (see ``load_quantized_dir``)."""
    ckpt = model_from_checkpoint_dir(Path(directory).expanduser(), device="meta", dtype=dtype)
    manifest = load_quantized_dir(
        directory, ckpt.model, device=device, dtype=dtype, key_map=ckpt.hf_to_native_key
    )
    ckpt.model.init_buffers(torch.device(device))
    return ckpt, manifest


def load_generation_model(
    checkpoint_dir: str | Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    adapter_dir: str | Path | None = None,
    merge_adapter: bool = False,
    quantize: str | None = None,
) -> LoadedModel:
    """The checkpoint's model in eval mode, with a PEFT adapter and quantization applied.

    Args:
        checkpoint_dir: an HF directory (a base or a merged fine-tune), or a directory written
            by ``tune.quant.save_quantized_dir`` (then no adapter and no ``quantize``).
        dtype: parameter dtype.
        device: where the weights go.
        adapter_dir: a PEFT adapter directory for ``checkpoint_dir`` (None: none).
        merge_adapter: fold the adapter into the base weights (plain ``nn.Linear`` again).
        quantize: a tune-quant scheme for the linear layers except ``output`` (None: none).

    Raises:
        AdapterMismatchError: (tune.peft) the adapter was made for a base of other names or shapes.
        QuantizedDirError: a quantized directory for another device type or dtype.
    """
    if is_quantized_dir(checkpoint_dir):
        if adapter_dir is not None or quantize is not None:
            raise ValueError(
                f"{checkpoint_dir} is already quantized: it takes no adapter and no quantize"
            )
        ckpt, manifest = load_quantized_checkpoint(checkpoint_dir, dtype=dtype, device=device)
        return LoadedModel(ckpt, quantized_modules=list(manifest.quantized_modules))
    ckpt = load_pretrained(checkpoint_dir, dtype=dtype, device=device)
    model = ckpt.model
    loaded = LoadedModel(ckpt)
    if adapter_dir is not None:
        tensors, adapter_config = read_peft_adapter_dir(adapter_dir, dtype=dtype, prefix="")
        loaded.adapted_modules = load_peft_adapter(
            model, tensors, adapter_config, key_map=ckpt.native_to_hf_key,
            source=str(Path(adapter_dir) / "adapter_config.json"),
        )  # fmt: skip
        logger.info("adapter %s: %d layers", adapter_dir, len(loaded.adapted_modules))
        if merge_adapter:
            merge_and_unload(model)
    if quantize is not None:
        loaded.quantized_modules = quantize_model(model, quantize, exclude=["output"])
        logger.info("quantized %d linear layers (%s)", len(loaded.quantized_modules), quantize)
    model.requires_grad_(False)
    model.eval()
    return loaded


def load_configured_model(cfg: Any, rt: Any, tokenizer: Tokenizer) -> LoadedModel:
    """``load_generation_model`` for a generate/eval config's ``model`` section and runtime.

    Raises:
        ValueError: ``tokenizer`` has ids past the model's embedding (see ``check_vocab_fits``).
    """
    m = cfg.model
    loaded = load_generation_model(
        m.checkpoint_dir, dtype=rt.dtype, device=rt.device, adapter_dir=m.adapter_dir,
        merge_adapter=m.merge_adapter, quantize=m.quantize,
    )  # fmt: skip
    check_vocab_fits(
        tokenizer.vocab_size, loaded.checkpoint.config.vocab_size,
        tokenizer_dir=cfg.tokenizer_dir, checkpoint_dir=m.checkpoint_dir,
    )  # fmt: skip
    return loaded
