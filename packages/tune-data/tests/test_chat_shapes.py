"""Chat rows in OpenAI (`messages`: role/content) and ShareGPT (`conversations`: from/value) shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.data import (
    MessageError,
    StreamingLoader,
    Tokenizer,
    build_sample_builder,
    chat_shape,
    load_source,
    openai_messages,
)
from tune.data.synthetic import write_jsonl

SPEAKERS = {"system": "system", "user": "human", "assistant": "gpt"}


def _conversations(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": f"Be brief, {i}."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}."},
            {"role": "user", "content": "And doubled?"},
            {"role": "assistant", "content": f"{4 * i}."},
        ]
        for i in range(n)
    ]


def _sharegpt(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"from": SPEAKERS[m["role"]], "value": m["content"]} for m in conversation]


def _chat_builder(tok: Tokenizer):
    return build_sample_builder(
        tok, "chat", column_map={}, chat_template=None, train_on_input=False
    )


def test_sharegpt_rows_give_the_token_ids_of_the_same_openai_rows(
    chatml_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    chats = _conversations(12)
    openai = write_jsonl([{"messages": c} for c in chats], tmp_path / "openai.jsonl")
    sharegpt = write_jsonl(
        [{"conversations": _sharegpt(c)} for c in chats], tmp_path / "sharegpt.jsonl"
    )
    batches = {}
    for name, path in (("openai", openai), ("sharegpt", sharegpt)):
        loader = StreamingLoader(
            str(path), _chat_builder(chatml_tokenizer), batch_size=12, max_seq_len=256,
            shuffle=False, drop_last=False,
        )  # fmt: skip
        batches[name] = next(iter(loader))
    assert batches["openai"].keys() == batches["sharegpt"].keys()
    for key, value in batches["openai"].items():
        assert value.tolist() == batches["sharegpt"][key].tolist(), key
    assert (batches["openai"]["labels"] != -100).sum() > 0
    # the same through a mapped column: {expected: dataset_column}
    dataset, _ = load_source(sharegpt)
    renamed = build_sample_builder(
        chatml_tokenizer, "chat", column_map={"messages": "conversations"}, chat_template=None,
        train_on_input=False,
    )  # fmt: skip
    assert (
        renamed(dataset[3], 3)["tokens"]
        == batches["openai"]["tokens"][3][batches["openai"]["attention_mask"][3].bool()].tolist()
    )


def test_an_unknown_speaker_is_named_with_its_row(
    chatml_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    rows = [{"conversations": _sharegpt(c)} for c in _conversations(6)]
    rows[4]["conversations"][2]["from"] = "bot"
    path = write_jsonl(rows, tmp_path / "bad.jsonl")
    with pytest.raises(MessageError) as info:
        StreamingLoader(str(path), _chat_builder(chatml_tokenizer), batch_size=1, max_seq_len=64)
    assert str(info.value) == (
        f"{path}:5: example 4: turn 2 has 'from'='bot'; expected one of ['assistant', "
        "'function_response', 'gpt', 'human', 'observation', 'system', 'tool', 'user']"
    )


def test_shape_detection_and_conversion() -> None:
    openai = _conversations(1)[0]
    assert chat_shape(openai) == "openai"
    assert chat_shape(_sharegpt(openai)) == "sharegpt"
    assert openai_messages(_sharegpt(openai)) == openai
    assert openai_messages(openai) is openai
    with pytest.raises(ValueError, match=r"chat shape must be one of"):
        openai_messages(openai, shape="alpaca")
    with pytest.raises(MessageError, match=r"^example 3: turn 0 must be a dict, got str"):
        openai_messages(["hi"], "example 3", shape="sharegpt")
