"""After quantization-aware training: convert the fake-quantized model and write it quantized."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tune.dist import gather_full_state_dict
from tune.models import CheckpointModel
from tune.peft import LoraConfig, lora_modules, merge_and_unload
from tune.quant import convert_qat, prepare_qat, save_quantized_dir
from tune.recipes.common.finetune_method import load_prepared


def _merge_adapters(model: nn.Module) -> None:
    if lora_modules(model):
        merge_and_unload(model)


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
    """Convert a QAT-trained model (in place; active adapters merged first) and write
    ``out_dir/quantized`` (``tune.quant.save_quantized_dir``). Call it after the float outputs.

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
        ValueError: nothing in ``model`` is prepared for ``scheme``, or the family fuses HF tensors.
    """
    if not ckpt.keys_one_to_one:
        raise ValueError(
            f"{base_dir}: this family fuses tensors in its HF checkpoint; a quantized export "
            "needs one HF tensor per native tensor"
        )
    if distributed:  # gather on rank 0 (collective), into a plain prepared model there
        state = gather_full_state_dict(model)
        if not is_main:
            return {}
        model = load_prepared(base_dir, method, lora, dtype=dtype, device=torch.device("cpu")).model
        prepare_qat(model, scheme, exclude=list(exclude))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or (lora is None and missing):
            raise ValueError(
                f"gathered QAT weights do not fit the rebuilt model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    convert_qat(model, merge_adapters=_merge_adapters, scheme=scheme)
    directory = Path(out_dir) / "quantized"
    save_quantized_dir(
        directory, model, scheme=scheme, dtype=dtype, key_map=ckpt.native_to_hf_key,
        source_dir=base_dir, qat=True, overwrite=True,
    )  # fmt: skip
    return {"quantized_dir": str(directory)}
