"""Build a native model from an HF checkpoint directory and load its weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tune.checkpoint import load_hf_checkpoint, load_safetensors_dir
from tune.models import CheckpointModel, model_from_checkpoint_dir

logger = logging.getLogger(__name__)


def load_pretrained(
    checkpoint_dir: str | Path, *, dtype: torch.dtype, device: torch.device
) -> CheckpointModel:
    """The model of ``checkpoint_dir`` with its weights, built on meta and filled shard by shard.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and safetensors weights.
        dtype: parameter dtype.
        device: where the weights go.
    """
    ckpt = model_from_checkpoint_dir(checkpoint_dir, device="meta", dtype=dtype)
    if ckpt.keys_one_to_one:
        load_hf_checkpoint(
            ckpt.model, checkpoint_dir, key_map=ckpt.hf_to_native_key, dtype=dtype, device=device
        )
    else:  # fused HF tensors (Phi-3): convert the whole state dict, then assign
        state = ckpt.hf_to_native(load_safetensors_dir(checkpoint_dir))
        state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
        ckpt.model.load_state_dict(state, assign=True, strict=True)
    ckpt.model.init_buffers(device)
    logger.info(
        "loaded %s (%s, %.1fM parameters) from %s",
        ckpt.config.model_type,
        dtype,
        sum(p.numel() for p in ckpt.model.parameters()) / 1e6,
        checkpoint_dir,
    )
    return ckpt


def check_vocab_fits(
    tokenizer_vocab_size: int,
    model_vocab_size: int,
    *,
    tokenizer_dir: str | Path,
    checkpoint_dir: str | Path,
) -> None:
    """Refuse a tokenizer that can produce ids the model's embedding has no row for.

    A smaller tokenizer is normal (embeddings are often padded to a multiple of 64 or 128).
    """
    if tokenizer_vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_dir} has {tokenizer_vocab_size} ids (with added tokens) but "
            f"the model of {checkpoint_dir} embeds only {model_vocab_size} (config.json "
            "vocab_size): ids past the embedding would fail mid-training. Use the model's own "
            "tokenizer, or resize the embedding first"
        )
