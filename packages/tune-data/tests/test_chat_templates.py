"""Bundled templates render and tokenize exactly as transformers' apply_chat_template does."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from tune.data import (
    BUNDLED_TEMPLATES,
    ChatTemplate,
    MessageError,
    Tokenizer,
    resolve_template,
    tokenize_messages,
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
    "prompt_only": [{"role": "user", "content": "Sort 5, 2, 9"}],
}
ALTERNATING_ONLY = {"mistral", "gemma"}


def _hf_reference(tok, messages, **kwargs):
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    out = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    return text, out["input_ids"], out["assistant_masks"]


@pytest.mark.parametrize("template", BUNDLED_TEMPLATES)
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_bundled_template_matches_transformers(
    tokenizer_dir, template: str, conversation: str, add_generation_prompt: bool
) -> None:
    path = tokenizer_dir(template)
    ours, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    chat = resolve_template(ours, None)  # the directory's own chat_template
    messages = CONVERSATIONS[conversation]
    text, ids, assistant_mask = _hf_reference(
        ref, messages, add_generation_prompt=add_generation_prompt
    )
    rendered = chat.render(messages, add_generation_prompt=add_generation_prompt)
    assert rendered.text == text
    sample = tokenize_messages(ours, chat, messages, add_generation_prompt=add_generation_prompt)
    assert sample["tokens"] == ids
    # Our labels are shifted: labels[t] is trained iff token t+1 is an assistant token.
    trained_next = [label != -100 for label in sample["labels"]]
    assert trained_next == [bool(m) for m in assistant_mask[1:]] + [False]
    if "assistant" in {m["role"] for m in messages}:
        assert any(trained_next)


@pytest.mark.parametrize("template", ["chatml", "qwen2.5", "qwen3", "llama3"])
def test_tool_turns_match_transformers(tokenizer_dir, template: str) -> None:
    path = tokenizer_dir(template)
    ours, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees."},
    ]
    text, ids, mask = _hf_reference(ref, messages)
    sample = tokenize_messages(ours, resolve_template(ours, None), messages)
    assert resolve_template(ours, None).render(messages).text == text
    assert sample["tokens"] == ids
    assert [label != -100 for label in sample["labels"]] == [bool(m) for m in mask[1:]] + [False]


def test_qwen3_reasoning_and_thinking_switch_match_transformers(tokenizer_dir) -> None:
    path = tokenizer_dir("qwen3")
    ours, ref = Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(path)
    chat = resolve_template(ours, None)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "old turn, hidden"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "add three twice"},
    ]
    text, ids, _ = _hf_reference(ref, messages)
    assert chat.render(messages).text == text
    assert "old turn, hidden" not in text
    assert "<think>\nadd three twice\n</think>" in text
    assert tokenize_messages(ours, chat, messages)["tokens"] == ids
    prompt = messages[:1]
    text, ids, _ = _hf_reference(ref, prompt, add_generation_prompt=True, enable_thinking=False)
    assert chat.render(prompt, add_generation_prompt=True, enable_thinking=False).text == text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_hf_template_globals_and_filters(chatml_tokenizer) -> None:
    source = (
        "{%- set ns = namespace(n=0) -%}{%- for m in messages -%}{%- set ns.n = ns.n + 1 -%}"
        "{%- endfor -%}{{ ns.n }}|{{ messages | tojson }}|{{ dict(a=1) | tojson }}|"
        "{{ strftime_now('%Y') | length }}|{{ eos_token }}|{{ bos_token is defined }}\n"
        "{% if add_generation_prompt %}GEN{% endif %}"
    )
    ref = ChatTemplate(source, chatml_tokenizer.special_tokens)
    messages = [{"role": "user", "content": 'a <b> & "c"'}]
    text = ref.render(messages, add_generation_prompt=True).text
    assert (
        text
        == '1|[{"role": "user", "content": "a <b> & \\"c\\""}]|{"a": 1}|4|<|im_end|>|False\nGEN'
    )


@pytest.mark.parametrize("template", ["mistral", "gemma"])
def test_role_order_the_template_cannot_render_names_the_example(tokenizer_dir, template) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir(template))
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(
        MessageError,
        match=r"example 41: the chat template cannot render roles \['user', 'user'\].*alternate",
    ):
        tokenize_messages(tok, resolve_template(tok, None), bad, where="example 41")


def test_unknown_role_and_missing_content_are_reported(chatml_tokenizer) -> None:
    chat = resolve_template(chatml_tokenizer, "chatml")
    with pytest.raises(MessageError, match=r"example 3: message 1 has role 'bot'"):
        tokenize_messages(
            chatml_tokenizer,
            chat,
            [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}],
            where="example 3",
        )
    with pytest.raises(MessageError, match=r"message 0 \(user\) has no 'content'"):
        tokenize_messages(chatml_tokenizer, chat, [{"role": "user"}])


def test_template_from_a_jinja_file(chatml_tokenizer, tmp_path) -> None:
    source = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    (tmp_path / "chat.jinja").write_text(source, encoding="utf-8")
    chat = resolve_template(chatml_tokenizer, str(tmp_path / "chat.jinja"))
    assert chat.render([{"role": "user", "content": "hi"}]).text == "<user>hi"
    with pytest.raises(ValueError, match=r"unknown template '.*missing.jinja' \(no such file"):
        resolve_template(chatml_tokenizer, str(tmp_path / "missing.jinja"))
