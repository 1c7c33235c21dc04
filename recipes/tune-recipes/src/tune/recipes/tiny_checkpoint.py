"""Make a small random-weight Llama-architecture checkpoint with its tokenizer, offline.

The demo, the tests and the benchmarks use it where a hub checkpoint would be: an HF directory
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) that
``transformers`` loads as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tune.checkpoint import save_hf_checkpoint
from tune.data import Tokenizer
from tune.data.synthetic import save_tiny_tokenizer
from tune.models import build_from_hf_config, convert_native_to_hf


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict:
    """A Llama ``config.json`` (as transformers writes it) for a model of the given size."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": "float32",
    }


def make_tiny_checkpoint(
    directory: str | Path,
    *,
    seed: int = 0,
    template: str = "chatml",
    vocab_size: int = 512,
    tokenizer_text: Iterable[str] = (),
    **model_sizes: Any,
) -> Path:
    """Write a random-weight tiny Llama checkpoint and a byte-level BPE tokenizer to ``directory``.

    Args:
        directory: output HF directory.
        seed: weight-init seed.
        template: bundled chat template of the tokenizer (see ``tune.data``).
        vocab_size: BPE vocabulary size to train.
        tokenizer_text: extra text the BPE is trained on (e.g. the task's rows).
        **model_sizes: overrides of ``tiny_llama_config`` (hidden_size, num_layers, ...).
    """
    directory = Path(directory)
    save_tiny_tokenizer(
        directory, template=template, vocab_size=vocab_size, extra_text=tokenizer_text
    )
    tok = Tokenizer.from_dir(directory)
    vocab = -(-tok.vocab_size // 64) * 64  # rounded up: the extra rows are never produced
    config = tiny_llama_config(
        vocab, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, **model_sizes
    )
    torch.manual_seed(seed)
    model = build_from_hf_config(config, device="cpu", dtype=torch.float32)
    model.init_weights()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    save_hf_checkpoint(directory, convert_native_to_hf(state, config), config=config)
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "do_sample": False})
    )
    return directory
