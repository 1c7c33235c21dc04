"""Bad inputs found up front, each named by file and line (or example) and what was expected."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import datasets
import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from tune.data import (
    ChatBuilder,
    ChatTemplate,
    DataSourceError,
    InstructionBuilder,
    MessageError,
    PreferenceBuilder,
    StreamingLoader,
    TextBuilder,
    Tokenizer,
    TokenizerFileError,
    bundled_template,
    load_source,
)
from tune.data.synthetic import save_tiny_tokenizer


def _chat(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": content}]}  # fmt: skip


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _validate(path: Path, builder: Any) -> None:
    dataset, _ = load_source(path)
    builder.validate(dataset)


# 1. bytes and JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["data.jsonl", "data.csv", "data.json"])
def test_invalid_utf8_names_file_line_and_byte(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    good = {
        "data.jsonl": b'{"text": "a"}\n',
        "data.csv": b"text\na\n",
        "data.json": b'[{"text": "a"},\n',
    }
    bad = {
        "data.jsonl": b'{"text": "caf\xe9"}\n',
        "data.csv": b"caf\xe9\n",
        "data.json": b'{"text": "caf\xe9"}]\n',
    }
    path.write_bytes(good[name] + bad[name])
    with pytest.raises(DataSourceError) as info:
        load_source(path)
    message = str(info.value)
    line = 3 if name == "data.csv" else 2
    assert message.startswith(f"{path}:{line}: invalid UTF-8 byte(s)"), message
    assert "byte offset" in message
    assert "expected UTF-8 text" in message


def test_malformed_json_document_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[{"text": "a"},\n {"text": }]\n')
    with pytest.raises(
        DataSourceError, match=r"data\.json:2:11: malformed JSON \(Expecting value\)"
    ):
        load_source(path)


def test_a_key_of_another_type_or_a_lone_surrogate_names_the_line(tmp_path: Path) -> None:
    mixed = _jsonl(tmp_path / "mixed.jsonl", [_chat("a"), _chat("b"), {"messages": 7}])
    with pytest.raises(DataSourceError) as info:
        load_source(mixed)
    assert str(info.value).startswith(
        f"{mixed}:3: key 'messages' (int in this row) cannot be stored"
    )
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"text": "a"}\n{"text": "b \\ud800"}\n')
    with pytest.raises(
        DataSourceError, match=r"surrogate\.jsonl:2: key 'text'.*surrogates not allowed"
    ):
        load_source(surrogate)


# 2. content of the wrong type -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "type_name"),
    [(5, "int"), ([{"type": "text", "text": "x"}], "list"), ({"a": 1}, "dict")],
)
def test_message_content_of_the_wrong_type_is_named(
    tmp_path: Path, chatml_tokenizer: Tokenizer, content: Any, type_name: str
) -> None:
    row = {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": content},
        ]
    }
    path = _jsonl(tmp_path / "chat.jsonl", [row] * 3)  # one type throughout: Arrow stores it
    with pytest.raises(MessageError) as info:
        _validate(path, ChatBuilder(chatml_tokenizer))
    assert str(info.value) == (
        f"{path}:1: example 0: message 0 content must be a string, got {type_name}"
    )
    mixed = _jsonl(tmp_path / "mixed.jsonl", [_chat("a"), _chat(content)])  # str and another type
    with pytest.raises(DataSourceError) as info:
        load_source(mixed)
    assert str(info.value).startswith(
        f"{mixed}:2: key 'messages' (list in this row) mixes types ('content' is str in item 0 "
        f"but {type_name} in item 1)"
    )


def test_none_content_and_wrong_column_types_are_named(
    tmp_path: Path, chatml_tokenizer: Tokenizer
) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", [_chat("a"), _chat(None)])
    with pytest.raises(
        MessageError, match=r"chat\.jsonl:2: example 1: message 1 \(assistant\) has no 'content'"
    ):
        _validate(path, ChatBuilder(chatml_tokenizer))
    rows = [{"instruction": 3, "output": "x"}, {"instruction": 4, "output": "y"}]
    path = _jsonl(tmp_path / "inst.jsonl", rows)
    with pytest.raises(DataSourceError) as info:
        _validate(path, InstructionBuilder(chatml_tokenizer))
    assert (
        str(info.value)
        == f"{path}:1: example 0: column 'instruction' must be a string, got int (3)"
    )
    rows = [{"prompt": "p", "chosen": {"text": "c"}, "rejected": {"text": "r"}}]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(
        DataSourceError,
        match=r"pairs\.jsonl:1: example 0: column 'chosen' must be a string or a list of messages, got dict",
    ):
        _validate(path, PreferenceBuilder(chatml_tokenizer))


# 3. rows that fail only when built ------------------------------------------------------------


def test_a_character_the_template_refuses_is_found_before_training(
    tmp_path: Path, chatml_tokenizer: Tokenizer
) -> None:
    rows = [_chat(f"fine {i}") for i in range(30)]
    rows[19] = _chat("bad \ue0f0 marker")
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(
        MessageError,
        match=r"chat\.jsonl:20: example 19: message text contains the reserved code points",
    ):
        StreamingLoader(path, ChatBuilder(chatml_tokenizer), batch_size=2, max_seq_len=64)


def test_unknown_tokens_without_byte_fallback_are_named(tmp_path: Path) -> None:
    backend = RustTokenizer(WordLevel({"[UNK]": 0, "</s>": 1, "hello": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = Tokenizer(backend, {"eos_token": "</s>"})
    path = _jsonl(tmp_path / "text.jsonl", [{"text": "hello"}, {"text": "hello \u2603"}])
    with pytest.raises(DataSourceError) as info:
        _validate(path, TextBuilder(tokenizer, add_bos=False))
    assert str(info.value).startswith(
        f"{path}:2: example 1: 1 token(s) of 'tokens' are the unknown token (id 0)"
    )


def test_any_error_while_building_is_wrapped_with_the_row(
    tmp_path: Path, chatml_tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = chatml_tokenizer.encode

    def encode(text: str, *args: Any, **kwargs: Any) -> list[int]:
        if "\x00" in text:
            raise RuntimeError("tokenizer exploded")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(chatml_tokenizer, "encode", encode)
    path = _jsonl(tmp_path / "text.jsonl", [{"text": "a"}, {"text": "b"}, {"text": "c\x00"}])
    with pytest.raises(DataSourceError) as info:
        _validate(path, TextBuilder(chatml_tokenizer))
    assert str(info.value) == (
        f"{path}:3: example 2: building the sample failed: RuntimeError: tokenizer exploded"
    )
    unnamed = datasets.Dataset.from_list([{"text": "a"}, {"text": "c\x00"}])  # no file: example
    with pytest.raises(DataSourceError, match=r"^example 1: building the sample failed"):
        TextBuilder(chatml_tokenizer).validate(unnamed)


def test_exotic_characters_that_tokenize_pass_validation(chatml_tokenizer: Tokenizer) -> None:
    texts = ["nul \x00", "nonchar \uffff", "e" + "\u0301" * 5000, "max \U0010ffff"]
    ChatBuilder(chatml_tokenizer).validate(datasets.Dataset.from_list([_chat(t) for t in texts]))


# 4. tokenizer files ---------------------------------------------------------------------------


def test_truncated_or_misshapen_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    path = save_tiny_tokenizer(tmp_path / "tok", "chatml")
    tokenizer_json = path / "tokenizer.json"
    text = tokenizer_json.read_text()
    tokenizer_json.write_text(text[: len(text) // 2])
    with pytest.raises(
        TokenizerFileError, match=r"tokenizer\.json:\d+:\d+: malformed JSON .*truncated"
    ):
        Tokenizer.from_dir(path)
    tokenizer_json.write_text("[1, 2]")
    with pytest.raises(
        TokenizerFileError,
        match=r"tokenizer\.json: expected a tokenizers JSON object with a 'model' object, got list",
    ):
        Tokenizer.from_dir(path)
    document = json.loads(text)
    document["model"]["type"] = "NoSuchModel"
    tokenizer_json.write_text(json.dumps(document))
    with pytest.raises(TokenizerFileError, match=rf"{tokenizer_json}: not a valid tokenizers file"):
        Tokenizer.from_dir(path)
    tokenizer_json.write_text(text)
    (path / "tokenizer_config.json").write_text('{"eos_token": ')
    with pytest.raises(TokenizerFileError, match=r"tokenizer_config\.json:1:\d+: malformed JSON"):
        Tokenizer.from_dir(path)


# 5. preference pairs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("  ", "no", r"column 'chosen' is empty; a preference pair needs two non-empty replies"),
        ("yes", "", r"column 'rejected' is empty"),
        ("same", "same", r"columns 'chosen' and 'rejected' are identical"),
        ([{"role": "assistant", "content": " "}], "no", r"column 'chosen' is empty"),
    ],
)
def test_empty_or_identical_preference_replies_are_refused(
    tmp_path: Path, chatml_tokenizer: Tokenizer, chosen: Any, rejected: Any, expected: str
) -> None:
    good = {
        "prompt": "p",
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    if isinstance(chosen, str):
        good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            good,
            {
                "prompt": "q",
                "chosen": chosen,
                "rejected": rejected
                if not isinstance(chosen, list)
                else [{"role": "assistant", "content": rejected}],
            },
        ],
    )
    with pytest.raises(DataSourceError, match=rf"pairs\.jsonl:2: example 1: {expected}"):
        _validate(path, PreferenceBuilder(chatml_tokenizer))


# 6. templates that would hang -----------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(10**9) %}{% endfor %}",
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "{% for a in [1] * 100000 %}{% for b in [1] * 100000 %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**10 }}",
        "{{ 7 ** 100000 }}",
    ],
)
def test_runaway_templates_fail_fast_with_a_named_error(source: str) -> None:
    template = ChatTemplate(source, name="my_template.jinja")
    start = time.perf_counter()
    with pytest.raises(MessageError, match=r"^example 4: chat template 'my_template\.jinja'"):
        template.render([{"role": "user", "content": "hi"}], where="example 4")
    assert time.perf_counter() - start < 1.0


def test_loops_in_normal_templates_render_as_before() -> None:
    source = (
        "{% for m in messages %}{{ loop.index }}/{{ loop.length }} {{ m.content }}"
        "{% if not loop.last %}|{% endif %}{% endfor %}{{ range(3) | list }}{{ range(4) | length }}"
        "{% for i in range(2) %}{% else %}never{% endfor %}{{ [1] * 3 }}{{ 2 ** 10 }}"
    )
    text = (
        ChatTemplate(source)
        .render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        .text
    )
    assert text == "1/2 a|2/2 b[0, 1, 2]4[1, 1, 1]1024"
    long = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"t{i}"} for i in range(2000)
    ]
    assert ChatTemplate(bundled_template("chatml")).render(long).text.count("<|im_start|>") == 2000


def test_a_template_syntax_error_names_the_template_and_line() -> None:
    with pytest.raises(
        MessageError, match=r"chat template 'inline template': syntax error at line 2"
    ):
        ChatTemplate("ok\n{% for x in %}")
