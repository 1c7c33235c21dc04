"""TransformersCausalLM: an HF causal LM with the native forward, its keys and logits unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tune.models import (
    TransformersCausalLM,
    model_from_checkpoint_dir,
    resolve_implementation,
    transformers_checkpoint_model,
)
from tune.models.llama import tiny_llama_config

transformers = pytest.importorskip("transformers")

SIZES: dict[str, Any] = {
    "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}  # fmt: skip


def _hf_model(config: Any, attn: str) -> Any:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def _olmo2(tie: bool = False) -> Any:
    return transformers.Olmo2Config(**SIZES, tie_word_embeddings=tie)


def _documents() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three documents laid end to end in one row: tokens, positions, document_ids [1, 17]."""
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, SIZES["vocab_size"], (1, n), generator=gen) for n in (5, 9, 3)]
    positions = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    ids = torch.cat([torch.full((d.shape[1],), i) for i, d in enumerate(docs)])[None]
    return docs, torch.cat(docs, dim=1), positions, ids


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_equal_hf_padded_and_packed(attn: str) -> None:
    hf = _hf_model(_olmo2(), attn)
    ours = TransformersCausalLM(hf).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, SIZES["vocab_size"], (2, 10), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, 7:] = 0  # right padding on the second row
    with torch.no_grad():
        expected = hf(input_ids=tokens, attention_mask=mask).logits
        got = ours(tokens, attention_mask=mask)
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)

        docs, packed, positions, ids = _documents()
        alone = torch.cat([hf(input_ids=d).logits for d in docs], dim=1)
        got = ours(packed, positions=positions, document_ids=ids)
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
        assert (ours(packed) - alone).abs().max() > 1e-3  # one sequence: the documents mix
        hidden = ours(packed, positions=positions, document_ids=ids, return_hidden=True)
        torch.testing.assert_close(ours.output(hidden), alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda: transformers.MistralConfig(**SIZES, sliding_window=4), id="window"),
        pytest.param(
            lambda: transformers.Qwen3Config(
                **SIZES, use_sliding_window=True, sliding_window=4, max_window_layers=1
            ),
            id="layer_types",
        ),
    ],
)
def test_packed_documents_keep_sliding_windows(config: Any) -> None:
    hf = _hf_model(config(), "sdpa")
    ours = TransformersCausalLM(hf).eval()
    docs, packed, positions, ids = _documents()
    with torch.no_grad():
        alone = torch.cat([hf(input_ids=d).logits for d in docs], dim=1)
        got = ours(packed, positions=positions, document_ids=ids)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_meta_build_has_checkpoint_keys_and_loads(tie: bool, tmp_path: Path) -> None:
    hf = _hf_model(_olmo2(tie), "sdpa")
    hf.save_pretrained(tmp_path)
    ckpt = model_from_checkpoint_dir(tmp_path, implementation="transformers", device="meta")
    model = ckpt.model
    assert isinstance(model, TransformersCausalLM)
    assert ckpt.implementation == "transformers"
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())  # rotary tables computed at build
    reference = hf.state_dict()
    assert list(model.state_dict()) == list(reference)
    model.load_state_dict({k: v.clone() for k, v in reference.items()}, assign=True)
    model.init_buffers("cpu")
    if tie:
        model.output.weight = model.get_submodule("model.embed_tokens").weight
    saved = ckpt.native_to_hf(model.state_dict())
    assert ("lm_head.weight" in saved) is not tie  # as save_pretrained writes it
    assert ckpt.hf_to_native_key("model.norm.weight") == "model.norm.weight"
    assert [c.__name__ for c in model.block_classes] == ["Olmo2DecoderLayer"]
    tokens = torch.randint(3, SIZES["vocab_size"], (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), hf(input_ids=tokens).logits)


def test_auto_is_native_only_for_a_native_family(tmp_path: Path) -> None:
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(tiny_llama_config(64)))
    _olmo2().save_pretrained(tmp_path / "olmo2")
    assert resolve_implementation(tmp_path / "llama", "auto") == "native"
    assert resolve_implementation(tmp_path / "olmo2", "auto") == "transformers"
    assert resolve_implementation(tmp_path / "llama", "transformers") == "transformers"
    with pytest.raises(ValueError, match="implementation must be one of"):
        resolve_implementation(tmp_path / "llama", "hf")
    with pytest.raises(ValueError, match="model_type 'olmo2' is not supported"):
        model_from_checkpoint_dir(tmp_path / "olmo2")  # native by default, as before
    wrapped = transformers_checkpoint_model(tmp_path / "llama", device="cpu").model
    assert wrapped.get_submodule("model.layers.0.mlp.gate_proj") is not None


def test_importing_tune_models_does_not_import_transformers() -> None:
    code = "import sys, tune.models; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
