"""Write the results of a run: an HF model directory, a PEFT adapter directory, a report.

Works for one process and for FSDP/TP runs: sharded weights are gathered to rank 0 first, and
rank 0 alone writes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.checkpoint import repo_id_of_snapshot, save_hf_checkpoint, save_peft_adapter
from tune.dist import gather_full_state_dict
from tune.models import CheckpointModel
from tune.peft import LoraConfig, export_peft_adapter, load_adapter_state_dict, merge_and_unload
from tune.recipes.common.finetune_method import load_prepared

logger = logging.getLogger(__name__)


def write_final_outputs(
    out_dir: Path,
    model: nn.Module,
    ckpt: CheckpointModel,
    base_dir: Path,
    *,
    method: str,
    lora: LoraConfig | None,
    dtype: torch.dtype,
    save_adapter: bool,
    save_merged: bool,
    is_main: bool,
    distributed: bool,
) -> dict[str, str]:
    """Write ``out_dir/adapter`` (PEFT) and/or ``out_dir/model`` (HF); returns their paths.

    Args:
        out_dir: the run directory.
        model: the trained model (possibly sharded).
        ckpt: the base checkpoint's model and key maps.
        base_dir: the base checkpoint directory (config and tokenizer files are copied from it).
        method: ``full``, ``lora``, ``qlora`` or ``dora``.
        lora: the adapter settings (adapter methods).
        dtype: dtype of the written weights.
        save_adapter: write the PEFT directory (adapter methods).
        save_merged: write the base with the adapter merged (always written for ``full``).
        is_main: this is rank 0.
        distributed: the model is sharded (collectives: every rank must call).
    """
    written: dict[str, str] = {}
    adapters, state = lora is not None, None
    if distributed:  # gather on rank 0 (collective); adapters go into a plain model there
        state = gather_full_state_dict(model, trainable_only=adapters)
        if not is_main:
            return written
        if adapters:
            model = load_prepared(
                base_dir, method, lora, dtype=dtype, device=torch.device("cpu"),
                implementation=ckpt.implementation,
            ).model  # fmt: skip
            load_adapter_state_dict(model, state)
            state = None
    if adapters and save_adapter:
        written["adapter_dir"] = str(_save_adapter(out_dir / "adapter", model, ckpt, base_dir))
    if not adapters or save_merged:
        if adapters:
            merge_and_unload(model, dequantize=True)
        if state is None:
            state = {k: v.detach() for k, v in model.state_dict().items()}
        written["model_dir"] = str(_save_model(out_dir / "model", state, ckpt, base_dir, dtype))
    return written


def _save_adapter(directory: Path, model: nn.Module, ckpt: CheckpointModel, base_dir: Path) -> Path:
    # The base as peft finds it from anywhere: its Hub id, else its absolute path.
    base = repo_id_of_snapshot(base_dir) or str(Path(base_dir).expanduser().resolve())
    tensors, adapter_config = export_peft_adapter(
        model, key_map=ckpt.native_to_hf_key, base_model_name_or_path=base
    )
    path = save_peft_adapter(directory, tensors, adapter_config, prefix="")  # keys are PEFT's
    logger.info("wrote PEFT adapter (%d tensors) to %s", len(tensors), path)
    return path


def _save_model(
    directory: Path, state_dict: dict[str, Any], ckpt: CheckpointModel, base_dir: Path,
    dtype: torch.dtype,
) -> Path:  # fmt: skip
    hf_state = ckpt.native_to_hf(state_dict)
    save_hf_checkpoint(directory, hf_state, dtype=dtype, source_dir=base_dir)  # its config.json
    logger.info("wrote HF model (%d tensors) to %s", len(hf_state), directory)
    return directory


def write_report(output: Any, text: str, lines: list[str]) -> Path | None:
    """Write ``text`` to ``output.file`` if set (never half-written; returns the path), then
    print ``lines`` (``output.print``) or log them."""
    path = None
    if output.file is not None:
        path = Path(output.file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        lines = [*lines, f"wrote {path}"]
    for line in lines:
        if output.print:
            sys.stdout.write(line + "\n")
        else:
            logger.info(line)
    return path
