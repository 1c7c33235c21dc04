"""Prompts from config values and prompt files: parsing, errors naming file:line, rendering."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tune.data import (
    ChatTemplate,
    PromptInput,
    PromptInputError,
    Tokenizer,
    collect_prompts,
    encode_prompt,
    parse_prompt,
    read_prompt_file,
    resolve_template,
)

PROMPTS = ["Translate cat to French.", "What is two plus two?", "Write a haiku about rain."]


def test_jsonl_and_txt_files_give_the_items_prompts(tmp_path: Path) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": PROMPTS[0]}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": PROMPTS[1]}]}) + "\n"
        + json.dumps({"prompt": PROMPTS[2], "id": 7}) + "\n"
    )  # fmt: skip
    got = read_prompt_file(jsonl)
    assert [p.where for p in got] == [f"{jsonl}:1", f"{jsonl}:3", f"{jsonl}:4"]
    assert [p.as_record() for p in got] == [
        PROMPTS[0], [{"role": "user", "content": PROMPTS[1]}], PROMPTS[2]
    ]  # fmt: skip
    assert got[1].display() == f"[user] {PROMPTS[1]}"
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(PROMPTS) + "\n\n")
    assert [p.text for p in read_prompt_file(txt)] == PROMPTS
    both = collect_prompts(["first", [{"role": "user", "content": "hi"}]], txt, key="prompts")
    assert [p.where for p in both][:3] == ["prompts.items.0", "prompts.items.1", f"{txt}:1"]
    assert [p.text for p in both] == ["first", None, *PROMPTS]


def test_bad_prompts_and_files_name_their_origin(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "ok"}\n\n{"prompt": "unclosed\n')
    with pytest.raises(PromptInputError, match=rf"{bad_json}:3: malformed JSON"):
        read_prompt_file(bad_json)
    no_key = tmp_path / "nokey.jsonl"
    no_key.write_text('{"prompt": "ok"}\n{"text": "what?"}\n')
    with pytest.raises(PromptInputError, match=rf"{no_key}:2: expected exactly one of .*'text'"):
        read_prompt_file(no_key)
    array = tmp_path / "array.jsonl"
    array.write_text('["a list"]\n')
    with pytest.raises(PromptInputError, match=rf"{array}:1: expected a JSON object, got list"):
        read_prompt_file(array)
    with pytest.raises(PromptInputError, match=r"unknown prompt file extension '\.csv'"):
        read_prompt_file(tmp_path / "p.csv")
    with pytest.raises(FileNotFoundError, match=r"prompts\.file: .*missing\.txt not found"):
        collect_prompts([], tmp_path / "missing.txt", key="prompts")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(PromptInputError, match=rf"prompts\.file: {blank} holds no prompt"):
        collect_prompts([], blank)
    with pytest.raises(PromptInputError, match=r"no prompts: set gen\.items or gen\.file"):
        collect_prompts([], None, key="gen")
    with pytest.raises(PromptInputError, match="k: the prompt is empty"):
        parse_prompt("  ", "k")
    with pytest.raises(PromptInputError, match="k: 'messages' must be a list"):
        parse_prompt({"messages": "hi"}, "k")
    with pytest.raises(PromptInputError, match=r"k: a prompt must be a string.*got int"):
        parse_prompt(3, "k")
    with pytest.raises(PromptInputError, match="k: message 0 has role 'wizard'"):
        parse_prompt([{"role": "wizard", "content": "hi"}], "k")


def test_rendering_equals_the_template_and_transformers(
    tokenizer_dir: Callable[..., Path],
) -> None:
    path = tokenizer_dir("chatml")
    tokenizer = Tokenizer.from_dir(path)
    template = resolve_template(tokenizer, None)
    hf_tok = AutoTokenizer.from_pretrained(path)
    system = "Be brief."
    for text in PROMPTS:
        encoded = encode_prompt(PromptInput("t", text=text), tokenizer, template, system=system)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        rendered = ChatTemplate(tokenizer.chat_template, tokenizer.special_tokens).render(
            messages, add_generation_prompt=True
        )
        assert encoded.text == rendered.text
        assert encoded.text.endswith("<|im_start|>assistant\n")  # the generation prompt
        hf_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        hf_ids = hf_ids if isinstance(hf_ids, list) else hf_ids["input_ids"]
        assert encoded.tokens == list(hf_ids)
    raw = encode_prompt(PromptInput("t", text=PROMPTS[0]), tokenizer, None)
    assert raw.text == PROMPTS[0]
    assert raw.tokens == hf_tok(PROMPTS[0])["input_ids"]
    chat = PromptInput("f.jsonl:2", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(PromptInputError, match=r"f\.jsonl:2: chat messages need the chat template"):
        encode_prompt(chat, tokenizer, None)
