"""Tokenizer: ids and text equal transformers' tokenizer on the same directory; BOS handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tune.data import Tokenizer
from tune.data.synthetic import save_tiny_tokenizer

TEXTS = [
    "What is 12 + 30?",
    "Reverse the letters of the word.\n\nharbor",
    "  leading spaces and trailing  ",
    "unicode: café – naïve ✓",
    "<|begin_of_text|>special in text<|eot_id|> after",
    "",
]


@pytest.mark.parametrize("template", ["llama3", "chatml", "gemma"])
def test_encode_decode_match_transformers(tokenizer_dir, template: str) -> None:
    path = tokenizer_dir(template)
    ours, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        ids = ours.encode(text, add_bos=False, add_eos=False)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(
            ids, skip_special_tokens=True
        )
    assert ours.encode_batch(TEXTS, add_bos=False) == [
        ref.encode(t, add_special_tokens=False) for t in TEXTS
    ]
    assert ours.vocab_size == len(ref)
    assert ours.eos_id == ref.eos_token_id
    assert ours.bos_id == ref.bos_token_id


def test_bos_is_never_doubled_and_eos_appended_once(tokenizer_dir) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("llama3"))
    bos, eos = tok.bos_id, tok.eos_id
    plain = tok.encode("hello world", add_bos=False, add_eos=False)
    assert tok.encode("hello world", add_bos=True, add_eos=True) == [bos, *plain, eos]
    # A BOS already written in the text (as chat templates do) is kept once.
    ids = tok.encode("<|begin_of_text|>hello world", add_bos=True)
    assert ids.count(bos) == 1
    assert ids[0] == bos
    assert tok.encode("hello world<|eot_id|>", add_eos=True).count(eos) == 1


def test_config_defaults_and_chat_template_file(tmp_path: Path) -> None:
    path = save_tiny_tokenizer(tmp_path, "llama3")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["add_bos_token"] = True
    config["bos_token"] = {"content": "<|begin_of_text|>", "special": True}  # AddedToken form
    del config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    tok = Tokenizer.from_dir(path)
    assert tok.encode("hi")[0] == tok.bos_id
    assert tok.chat_template == "{{ bos_token }}{{ messages[0]['content'] }}"
    assert tok.pad_id == tok.eos_id  # no pad token: pads with EOS


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    path = save_tiny_tokenizer(tmp_path / "t", "chatml")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|not_a_token|>"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"eos_token='<\|not_a_token\|>' is not in the tokenizer"):
        Tokenizer.from_dir(path)


def test_post_processor_bos_is_the_default_like_transformers(tmp_path: Path) -> None:
    # Llama 3 checkpoints add BOS through tokenizer.json's TemplateProcessing, not the config.
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import processors

    path = save_tiny_tokenizer(tmp_path, "llama3")
    backend = RustTokenizer.from_file(str(path / "tokenizer.json"))
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, backend.token_to_id(bos))],
    )
    backend.save(str(path / "tokenizer.json"))
    ours, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    for text in TEXTS[:4]:
        assert ours.encode(text) == ref.encode(text)  # BOS added once, by default
        assert ours.encode(text)[0] == ours.bos_id
    # Chat rendering writes BOS itself and HF tokenizes it without special tokens: still one BOS.
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    from tune.data import resolve_template, tokenize_messages

    ids = tokenize_messages(ours, resolve_template(ours, None), messages, add_bos=True)["tokens"]
    assert ids == ref.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(ours.bos_id) == 1
