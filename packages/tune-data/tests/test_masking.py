"""Label-mask goldens: exactly assistant tokens and their end-of-turn are trained, one BOS."""

from __future__ import annotations

import pytest
import torch

from tune.data import (
    BUNDLED_TEMPLATES,
    IGNORE_INDEX,
    Tokenizer,
    collate_padded,
    resolve_template,
    shift_labels,
    spans_to_token_mask,
    template_end_of_turn,
    tokenize_messages,
    tokenize_text,
)

MESSAGES = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "Reverse: tiger"},
    {"role": "assistant", "content": "regit"},
]


def _trained_text(tok: Tokenizer, sample: dict[str, list[int]]) -> str:
    return tok.decode([label for label in sample["labels"] if label != IGNORE_INDEX])


@pytest.mark.parametrize("template", BUNDLED_TEMPLATES)
def test_exactly_assistant_tokens_and_their_eos_are_trained(tokenizer_dir, template: str) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir(template))
    sample = tokenize_messages(tok, resolve_template(tok, None), MESSAGES)
    end = template_end_of_turn(template) or tok.special_tokens["eos_token"]
    assert _trained_text(tok, sample) == f"7{end}regit{end}"
    # The trained targets are contiguous runs ending at an end-of-turn token.
    end_id = tok.token_to_id(end)
    trained = [label for label in sample["labels"] if label != IGNORE_INDEX]
    assert trained.count(end_id) == 2
    assert trained[-1] == end_id
    bos = tok.bos_id
    if "bos_token" in resolve_template(tok, None).source and bos is not None:
        assert sample["tokens"][0] == bos
        assert sample["tokens"].count(bos) == 1
        again = tokenize_messages(tok, resolve_template(tok, None), MESSAGES, add_bos=True)
        assert again["tokens"] == sample["tokens"]  # add_bos never doubles the template's BOS


def test_golden_chatml_labels(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    sample = tokenize_messages(tok, resolve_template(tok, "chatml"), messages)
    prefix = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_bos=False)
    answer = tok.encode("ok<|im_end|>", add_bos=False)
    tail = tok.encode("\n", add_bos=False)
    assert sample["tokens"] == prefix + answer + tail
    expected = (
        [IGNORE_INDEX] * (len(prefix) - 1) + answer + [IGNORE_INDEX] * len(tail) + [IGNORE_INDEX]
    )
    assert sample["labels"] == expected


def test_pad_equal_to_eos_keeps_trained_eos(tokenizer_dir) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("mistral"))  # no pad token: pads with </s> == EOS
    assert tok.pad_id == tok.eos_id
    chat = resolve_template(tok, None)
    short = tokenize_messages(tok, chat, MESSAGES[1:3])
    long = tokenize_messages(tok, chat, MESSAGES[1:])
    batch = collate_padded([short, long], tok.pad_id, pad_to_multiple_of=8)
    assert batch["tokens"].shape[1] % 8 == 0
    eos = tok.eos_id
    trained_eos = (batch["labels"] == eos).sum(dim=1).tolist()
    assert trained_eos == [1, 2]
    n = len(short["tokens"])
    assert (batch["tokens"][0, n:] == eos).all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["tokens"].shape[1] - n)


def test_untrainable_turns_and_train_on_all(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    chat = resolve_template(tok, "chatml")
    messages = [dict(m) for m in MESSAGES]
    messages[2]["trainable"] = False
    sample = tokenize_messages(tok, chat, messages)
    assert _trained_text(tok, sample) == "regit<|im_end|>"
    everything = tokenize_messages(tok, chat, MESSAGES, train_on="all")
    assert everything["labels"] == [*everything["tokens"][1:], IGNORE_INDEX]


def test_plain_text_trains_every_token_with_single_bos(tokenizer_dir) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("llama3"))
    sample = tokenize_text(tok, "<|begin_of_text|>walnut yellow zebra")
    assert sample["tokens"].count(tok.bos_id) == 1
    assert sample["tokens"][-1] == tok.eos_id
    assert sample["labels"] == [*sample["tokens"][1:], IGNORE_INDEX]


def test_span_mask_and_shift_hand_computed() -> None:
    offsets = [(0, 2), (2, 5), (5, 6), (6, 9), (9, 12)]
    assert spans_to_token_mask(offsets, [(2, 6), (10, 11)]) == [False, True, True, False, True]
    assert spans_to_token_mask(offsets, []) == [False] * 5
    assert shift_labels([10, 11, 12, 13], [False, False, True, True]) == [-100, 12, 13, -100]


def test_labels_align_with_next_token_loss() -> None:
    # labels[t] is the target of logits[t]: CE over aligned labels equals CE over shifted tokens.
    torch.manual_seed(0)
    tokens = [5, 9, 3, 7, 2]
    labels = shift_labels(tokens, [True] * 5)
    logits = torch.randn(5, 16)
    aligned = torch.nn.functional.cross_entropy(logits, torch.tensor(labels), ignore_index=-100)
    shifted = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(tokens[1:]))
    assert torch.allclose(aligned, shifted)
