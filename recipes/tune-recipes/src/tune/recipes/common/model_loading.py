"""Build a model (native, or transformers') from an HF checkpoint directory and load its weights."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tune.checkpoint import load_hf_checkpoint, load_safetensors_dir
from tune.models import CheckpointModel, model_from_checkpoint_dir

logger = logging.getLogger(__name__)


def load_pretrained(
    checkpoint_dir: str | Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    implementation: str = "native",
) -> CheckpointModel:
    """The model of an HF ``checkpoint_dir`` in ``dtype`` on ``device``, filled shard by shard.

    Args:
        implementation: ``native``, ``transformers`` or ``auto`` (``model.implementation``).
    """
    start = time.perf_counter()
    ckpt = model_from_checkpoint_dir(
        checkpoint_dir, device="meta", dtype=dtype, implementation=implementation
    )
    if ckpt.keys_one_to_one:
        load_hf_checkpoint(
            ckpt.model, checkpoint_dir, key_map=ckpt.hf_to_native_key, dtype=dtype, device=device
        )
    else:  # fused HF tensors (Phi-3): convert the whole state dict, then assign
        state = ckpt.hf_to_native(load_safetensors_dir(checkpoint_dir))
        state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
        ckpt.model.load_state_dict(state, assign=True, strict=True)
    ckpt.model.init_buffers(device)
    millions = sum(p.numel() for p in ckpt.model.parameters()) / 1e6
    logger.info("loaded %s (%s implementation, %s, %.1fM parameters) from %s in %.2f s",
                ckpt.config.model_type, ckpt.implementation, dtype, millions,
                checkpoint_dir, time.perf_counter() - start)  # fmt: skip
    return ckpt
