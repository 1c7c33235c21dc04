"""Shared fixtures: a tiny random `transformers` Llama and its config."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_llama_config(**overrides):
    """A 2-layer, hidden-32 Llama config (random weights, no download)."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


@pytest.fixture
def tiny_llama():
    """Factory `tiny_llama(seed, **config_overrides)` of tiny random `LlamaForCausalLM`s."""
    return _tiny_llama


# --- GGUF tests: tiny random models of each family and a matching byte-level BPE tokenizer. ---

GGUF_VOCAB = 320  # model rows; the tokenizer below has fewer tokens (llama.cpp pads the list)
GGUF_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


@pytest.fixture(scope="session")
def gguf_tokenizer_files() -> dict:
    """`{"tokenizer.json": dict, "tokenizer_config.json": dict}`: a 300-token byte-level BPE."""
    import json

    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello tokens 123."]
    tok.train_from_iterator(text * 20, trainer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": GGUF_CHATML,
    }
    return {"tokenizer.json": json.loads(tok.to_str()), "tokenizer_config.json": config}


def _gguf_family_config(family: str, **overrides):
    import transformers

    common = dict(
        vocab_size=GGUF_VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    per_family = {
        # head_dim != hidden / heads: GGUF's key_length / rope.dimension_count must carry it
        "llama": (transformers.LlamaConfig, dict(head_dim=32, rope_theta=50000.0)),
        "mistral": (transformers.MistralConfig, dict(head_dim=16)),
        "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
        # transformers' GGUF loader ignores qwen3 key_length and keeps its default 128
        "qwen3": (transformers.Qwen3Config, dict(head_dim=128)),
        "phi3": (transformers.Phi3Config, dict()),
        # query_pre_attn_scalar = head_dim, which llama.cpp assumes (and transformers' GGUF
        # loader leaves at its default, 256)
        "gemma2": (transformers.Gemma2Config, dict(head_dim=256, num_key_value_heads=1)),
        "gemma3": (
            transformers.Gemma3TextConfig,
            dict(head_dim=256, num_key_value_heads=1, num_hidden_layers=6),
        ),
    }
    cls, extra = per_family[family]
    return cls(**{**common, **extra, **overrides})


def _gguf_tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny random `<Family>ForCausalLM` with every parameter (norms, biases too) randomized."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_gguf_family_config(family, **overrides)).eval()
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, param in model.named_parameters():
            base = 1.0 if name.endswith("norm.weight") and not gemma else 0.0
            param.copy_(base + 0.1 * torch.randn_like(param))
    return model


@pytest.fixture
def gguf_tiny_model():
    """Factory `gguf_tiny_model(family, seed=0, **config_overrides)`; family is one of llama,
    mistral, qwen2, qwen3, phi3, gemma2, gemma3."""
    return _gguf_tiny_model


@pytest.fixture
def gguf_model_dir(tmp_path, gguf_tokenizer_files):
    """Factory `gguf_model_dir(model) -> Path`: `save_pretrained` plus the tokenizer files."""
    import json

    def save(model, name: str = "hf"):
        directory = tmp_path / name
        model.save_pretrained(directory)
        for file_name, body in gguf_tokenizer_files.items():
            (directory / file_name).write_text(json.dumps(body))
        return directory

    return save
