"""GGUF tokenizer metadata <-> HF tokenizer files, on small tokenizers trained here.

Parity is checked against two references: the HF tokenizer we started from (round trips), and
transformers' own GGUF tokenizer (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tune.checkpoint.gguf.tokenizer_export import add_tokenizer_metadata  # noqa: E402
from tune.checkpoint.gguf.tokenizer_import import (  # noqa: E402
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    UnsupportedTokenizerError,
    hf_tokenizer_files_from_gguf,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! hello World, HELLO.",
    "Numbers: 12345, 3.14159 and 2024-11-29.",
    "def add(a, b):\n    return a + b\n",
    "Ünïcödé: café, naïve, 東京, Привет мир",
    "  indented  text with   spaces\n\n\tand tabs",
    "I'm sure they'll say it's fine; we've done it, you'd agree.",
    "tokenizers turn text into tokens; tokens into ids.",
] * 20

TEXTS = [
    "Hello world",
    " leading space",
    "two  spaces and\nnewline\n\n",
    "unseen: ☃ 😀 Ω ß",
    "<s> inside </s> text",
    "end</s>start<s>again",
    "<|im_start|>user\nhi<|im_end|>",
    "café naïve 東京",
    "12345 + 678 = 13023",
    "I'M SURE THEY'LL",
    "",
    " ",
    "\n",
    "\t\ttabs\r\n",
    "def f(x):\n    return x ** 2",
]

BYTE_LEVEL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _write_gguf(path: Path, arch: str, write_tokenizer) -> dict[str, Any]:
    """A GGUF holding one dummy tensor and the tokenizer `write_tokenizer(writer)` adds; its metadata."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    write_tokenizer(writer)
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {name: field.contents() for name, field in gguf.GGUFReader(str(path)).fields.items()}


def _save(files: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, ensure_ascii=False))
    return directory


def _ids(tokenizer, texts=TEXTS) -> list[list[int]]:
    """Token ids with the tokenizer's own special tokens (BOS where it adds one)."""
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return [tokenizer.encode(t).ids for t in texts]
    return [tokenizer(t)["input_ids"] for t in texts]


# --- byte-level BPE -------------------------------------------------------------------------------


def _byte_level_pre(name: str):
    pre = tokenizers.pre_tokenizers
    level = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    return {
        "gpt-2": pre.ByteLevel(add_prefix_space=False),
        "smollm": pre.Sequence(
            [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]
        ),
        "llama-bpe": pre.Sequence([pre.Split(tokenizers.Regex(LLAMA3_SPLIT), "isolated"), level]),
        "qwen2": pre.Sequence([pre.Split(tokenizers.Regex(QWEN2_SPLIT), "isolated"), level]),
    }[name]


@pytest.fixture(scope="module", params=["gpt-2", "smollm", "llama-bpe", "qwen2"])
def byte_level_hf(request, tmp_path_factory) -> tuple[str, Path]:
    """A byte-level BPE (vocab 400, 3 special tokens) trained with the pre-tokenizer `pre`, saved as HF files."""
    name = request.param
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(ignore_merges=name == "llama-bpe"))
    tok.pre_tokenizer = _byte_level_pre(name)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=BYTE_LEVEL_SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([tokenizers.AddedToken("<think>", normalized=False, special=False)])
    directory = tmp_path_factory.mktemp(f"hf-{name}")
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHATML,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return name, directory


def test_byte_level_round_trip(byte_level_hf, tmp_path):
    """HF files -> GGUF metadata -> HF files: the pre name, the token table, and identical ids."""
    pre_name, source = byte_level_hf
    tokenizer_json = json.loads((source / "tokenizer.json").read_text())
    config = json.loads((source / "tokenizer_config.json").read_text())
    metadata = _write_gguf(
        tmp_path / "tok.gguf",
        "llama",
        lambda w: add_tokenizer_metadata(w, tokenizer_json, config, where=str(source)),
    )
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.pre"] == pre_name
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    vocab = tokenizer_json["model"]["vocab"]
    assert len(tokens) == 401
    assert all(tokens[i] == t for t, i in vocab.items())
    assert types[:3] == [3, 3, 3]
    assert (tokens[400], types[400]) == ("<think>", 4)
    assert set(types[3:400]) == {1}
    assert metadata["tokenizer.ggml.merges"] == [
        " ".join(m) for m in tokenizer_json["model"]["merges"]
    ]
    assert metadata["tokenizer.ggml.bos_token_id"] == 1
    assert metadata["tokenizer.ggml.eos_token_id"] == 2
    assert metadata["tokenizer.ggml.padding_token_id"] == 0
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert metadata["tokenizer.chat_template"] == CHATML

    files = hf_tokenizer_files_from_gguf(metadata)
    assert files["tokenizer_config.json"]["chat_template"] == CHATML
    assert files["tokenizer_config.json"]["eos_token"] == "<|im_end|>"
    ours = tokenizers.Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
    original = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    expected = _ids(original)
    assert _ids(ours) == expected
    assert (
        _ids(transformers.AutoTokenizer.from_pretrained(_save(files, tmp_path / "ours")))
        == expected
    )
    assert all(
        ours.decode(ids, skip_special_tokens=False) == t
        for ids, t in zip(_ids(ours), TEXTS, strict=True)
    )
    assert ours.encode("<think>x").ids[0] == 400  # user-defined tokens stay whole

    # transformers reads the GGUF we wrote to the same ids.
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tok.gguf")
    assert _ids(reference) == expected


def test_unknown_pre_tokenizer(tmp_path, caplog):
    """Export names an unknown split "default"; import of an unknown name falls back to GPT-2's."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [
            tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\p{N}{1,2}"), "isolated"),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tokenizer_json = json.loads(tok.to_str())
    with caplog.at_level(logging.WARNING):
        metadata = _write_gguf(
            tmp_path / "t.gguf",
            "llama",
            lambda w: add_tokenizer_metadata(w, tokenizer_json, {}, where="src"),
        )
    assert metadata["tokenizer.ggml.pre"] == "default"
    assert "src/tokenizer.json: pre-tokenizer" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        files = hf_tokenizer_files_from_gguf({**metadata, "tokenizer.ggml.pre": "no-such-pre"})
    assert "'no-such-pre' is not one of" in caplog.text
    assert files["tokenizer.json"]["pre_tokenizer"]["type"] == "ByteLevel"


def test_unsupported_tokenizers_are_named():
    with pytest.raises(
        UnsupportedTokenizerError,
        match=r"model\.gguf: tokenizer.ggml.model is 't5'.*'gpt2', 'llama'",
    ):
        hf_tokenizer_files_from_gguf(
            {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]}, where="model.gguf"
        )
    unigram = {"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}
    with pytest.raises(
        UnsupportedTokenizerError, match=r"out/tokenizer.json: model type 'Unigram'"
    ):
        add_tokenizer_metadata(None, unigram, {}, where="out")  # type: ignore[arg-type]


def test_vocab_size_pads_with_unused_tokens(byte_level_hf, tmp_path):
    _, source = byte_level_hf
    tokenizer_json = json.loads((source / "tokenizer.json").read_text())
    metadata = _write_gguf(
        tmp_path / "t.gguf",
        "llama",
        lambda w: add_tokenizer_metadata(w, tokenizer_json, {}, where="src", vocab_size=408),
    )
    assert metadata["tokenizer.ggml.tokens"][401:] == [f"[PAD{i}]" for i in range(401, 408)]
    assert metadata["tokenizer.ggml.token_type"][401:] == [5] * 7


# --- SentencePiece BPE ----------------------------------------------------------------------------


def build_sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types laid out as llama.cpp writes a SentencePiece vocabulary.

    <unk> <s> </s>, 256 byte tokens, then pieces best-first (score minus their merge rank), then
    the single characters below every piece. The merges are those of a BPE trained here with
    words cut at spaces (as SentencePiece does).
    """
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=True
    )
    tok.train_from_iterator(
        CORPUS, tokenizers.trainers.BpeTrainer(vocab_size=400, show_progress=False)
    )
    trained = json.loads(tok.to_str())["model"]
    pieces = list(dict.fromkeys(a + b for a, b in trained["merges"]))
    # A piece of two spaces: Gemma files spell it with real spaces.
    pieces.insert(0, "▁▁")
    chars = [t for t in sorted(trained["vocab"], key=trained["vocab"].get) if t not in set(pieces)]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + chars
    scores = (
        [0.0] * 259
        + [-float(i) for i in range(len(pieces))]
        + [-1000.0 - i for i in range(len(chars))]
    )
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) + len(chars))
    return tokens, scores, types


@pytest.fixture(scope="module")
def sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    return build_sentencepiece_vocab()


def _sentencepiece_gguf(path: Path, arch: str, vocab, *, add_space_prefix: bool) -> dict[str, Any]:
    tokens, scores, types = vocab
    if arch.startswith("gemma"):
        tokens = [" " * len(t) if t and not t.strip("▁") else t for t in tokens]

    def write(w) -> None:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(add_space_prefix)

    return _write_gguf(path, arch, write)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma2"])
def test_sentencepiece_import_matches_transformers(arch, sentencepiece_vocab, tmp_path):
    """A merges-free SentencePiece GGUF: our files give transformers' GGUF tokenizer's ids, and round trip."""
    metadata = _sentencepiece_gguf(
        tmp_path / "t.gguf",
        arch,
        sentencepiece_vocab,
        add_space_prefix=not arch.startswith("gemma"),
    )
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    expected = _ids(reference)
    assert all(ids[0] == 1 for ids in expected)  # BOS added
    assert any(259 in ids for ids in expected)  # the two-space piece is used (▁▁ has id 259)
    assert any(set(ids) & set(range(3, 259)) for ids in expected)  # byte fallback is used

    files = hf_tokenizer_files_from_gguf(metadata)
    ours = tokenizers.Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
    assert _ids(ours) == expected
    hf_ours = transformers.AutoTokenizer.from_pretrained(_save(files, tmp_path / "ours"))
    assert _ids(hf_ours) == expected
    decoded = [hf_ours.decode(ids, skip_special_tokens=True) for ids in expected]
    assert decoded == [reference.decode(ids, skip_special_tokens=True) for ids in expected]

    # Our files back to GGUF (now with scores from the merges, and the merges): same ids.
    tokenizer_json = files["tokenizer.json"]
    config = files["tokenizer_config.json"]
    exported = _write_gguf(
        tmp_path / "rt" / "t.gguf",
        arch,
        lambda w: add_tokenizer_metadata(w, tokenizer_json, config, where="ours"),
    )
    assert exported["tokenizer.ggml.model"] == "llama"
    assert exported["tokenizer.ggml.token_type"] == sentencepiece_vocab[2]
    assert exported["tokenizer.ggml.add_space_prefix"] is (not arch.startswith("gemma"))
    assert exported["tokenizer.ggml.add_bos_token"] is True
    assert exported["tokenizer.ggml.unknown_token_id"] == 0
    again = tokenizers.Tokenizer.from_str(
        json.dumps(hf_tokenizer_files_from_gguf(exported)["tokenizer.json"])
    )
    assert _ids(again) == expected
    # The scores alone (as llama.cpp reads the file) give the same merges, hence the same ids.
    no_merges = {k: v for k, v in exported.items() if k != "tokenizer.ggml.merges"}
    from_scores = hf_tokenizer_files_from_gguf(no_merges)["tokenizer.json"]
    assert _ids(tokenizers.Tokenizer.from_str(json.dumps(from_scores))) == expected
    assert (
        _ids(transformers.AutoTokenizer.from_pretrained(tmp_path / "rt", gguf_file="t.gguf"))
        == expected
    )
