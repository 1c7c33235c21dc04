"""A tiny random checkpoint of a family tune.models has no native build for (OLMo 2).

For the tests of ``model.implementation: transformers``: written with ``transformers``'
``save_pretrained`` and the same offline BPE tokenizer as ``make_tiny_checkpoint``::

    assets = make_tiny_olmo2_assets(tmp_path)
    run_in_process("sft", "sft/tiny_cpu_lora", tiny_overrides(assets, out))
"""

from __future__ import annotations

from pathlib import Path

import torch

from tune.data import Tokenizer
from tune.data.synthetic import save_tiny_tokenizer, synthetic_instruction_rows, write_jsonl
from tune.recipes.tiny_workspace import NF4_FRIENDLY_SIZES
from tune_testing import TinyAssets


def make_tiny_olmo2(
    directory: Path,
    *,
    seed: int = 0,
    tokenizer_text: list[str] | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random OLMo 2 HF directory (NF4-friendly sizes: QLoRA quantizes every layer).

    Args:
        directory: the output directory (created).
        seed: weight-init seed.
        tokenizer_text: extra text the BPE is trained on.
        tie_word_embeddings: share the embedding with the LM head.
    """
    from transformers import AutoModelForCausalLM, Olmo2Config

    save_tiny_tokenizer(directory, template="chatml", extra_text=tokenizer_text or ())
    tok = Tokenizer.from_dir(directory)
    sizes = NF4_FRIENDLY_SIZES
    config = Olmo2Config(
        vocab_size=-(-tok.vocab_size // 64) * 64, hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"], num_hidden_layers=sizes["num_layers"],
        num_attention_heads=sizes["num_heads"], num_key_value_heads=sizes["num_kv_heads"],
        max_position_embeddings=512, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    return directory


def make_tiny_olmo2_assets(root: Path, *, num_rows: int = 240, seed: int = 0) -> TinyAssets:
    """A tiny random OLMo 2 (``make_tiny_olmo2``) and ``num_rows`` instruction rows."""
    rows = synthetic_instruction_rows(num_rows, seed=seed)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    ckpt = make_tiny_olmo2(root / "olmo2", seed=seed, tokenizer_text=text)
    return TinyAssets(ckpt, write_jsonl(rows, root / "data.jsonl"))
