"""Turn dataset rows into tokenized samples: instruction, chat, text, prompt+answer (preference
pairs: `tune.data.preference`); `build_sample_builder` picks one by format name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import datasets

from tune.data.bundled_templates import BUNDLED_TEMPLATES, bundled_template
from tune.data.chat_shapes import CHAT_SHAPES, SHAREGPT_ROLES, openai_messages, sharegpt_to_messages
from tune.data.chat_template import ChatTemplate
from tune.data.column_maps import BUILDER_COLUMNS, column_map_problem
from tune.data.masking import tokenize_messages, tokenize_text
from tune.data.messages import Message, to_messages
from tune.data.row_checks import (
    check_sample,
    iter_rows,
    plainly_valid,
    require_assistant_content,
    require_string,
    require_text,
    require_values,
    with_location,
)
from tune.data.sources import require_columns, row_location
from tune.data.tokenizer import Tokenizer


def resolve_template(tokenizer: Tokenizer, template: str | ChatTemplate | None) -> ChatTemplate:
    """A `ChatTemplate` from a bundled name, jinja source or file, an instance, or the tokenizer's own.

    Args:
        tokenizer: supplies the special tokens (and the default template when `template` is None).
        template: a bundled name (`llama3`, ...), jinja source, the path of a jinja file (`~`
            expanded), a `ChatTemplate`, or None.
    """
    if isinstance(template, ChatTemplate):
        return template
    if template is None:
        if tokenizer.chat_template is None:
            raise ValueError(
                "the tokenizer directory has no chat_template; pass template= one of "
                f"{list(BUNDLED_TEMPLATES)} or jinja source"
            )
        source, name = tokenizer.chat_template, "the tokenizer's chat_template"
    elif template in BUNDLED_TEMPLATES:
        source, name = bundled_template(template), template
    elif "{%" in template or "{{" in template:
        source, name = template, "inline template"
    elif Path(template).expanduser().is_file():
        source, name = Path(template).expanduser().read_text(encoding="utf-8"), template
    else:
        raise ValueError(
            f"unknown template {template!r} (no such file either); bundled: "
            f"{list(BUNDLED_TEMPLATES)}"
        )
    return ChatTemplate(source, tokenizer.special_tokens, name=name)


__all__ = [
    "SHAREGPT_ROLES",
    "ChatBuilder",
    "InstructionBuilder",
    "PromptAnswerBuilder",
    "TextBuilder",
    "build_sample_builder",
    "resolve_template",
    "sharegpt_to_messages",
]


class _Builder:
    """Rows -> samples, reading the columns `column_keys` through `columns` (expected -> column).

    `columns_key` is how errors name the column map: `columns` for a builder made in code, the
    config key (`data.column_map`) for one a recipe makes.
    """

    kind = "sft"
    required: tuple[str, ...] = ()
    column_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, columns: Mapping[str, str] | None, columns_key: str = "columns") -> None:
        self.columns_key = columns_key
        self.columns = dict(self._default_columns())
        problem = column_map_problem(columns or {}, self.column_keys, columns_key)
        if problem:
            raise ValueError(problem)
        self.columns.update(columns or {})

    def _default_columns(self) -> dict[str, str]:
        return {key: key for key in self.column_keys}

    def col(self, row: Mapping[str, Any], key: str) -> Any:
        return row.get(self.columns[key])

    def check_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise naming the example and column when a required column is null in `row`."""
        required = {key: self.columns[key] for key in self.required}
        require_values(row, required, index, type(self).__name__)

    def validate(self, dataset: datasets.Dataset, build_samples: bool = True) -> None:
        """Check that the mapped columns and rows exist, then check and build every row.

        One pass over the raw rows (only the mapped columns), so a bad row stops a run before
        training instead of when it is streamed. Building renders the chat template and
        tokenizes (about 0.2 ms a short chat on one core): a character the tokenizer or template
        cannot take, a row with no tokens or with unknown tokens is found here. Any error names
        the example (and `file:line` when `load_source` read the dataset from local files).

        Args:
            dataset: the source.
            build_samples: also build (render and tokenize) every sample; False checks the
                raw rows only.
        """
        required = {key: self.columns[key] for key in self.required}
        require_columns(dataset, required, type(self).__name__, columns_key=self.columns_key)
        tokenizer = getattr(self, "tokenizer", None)
        unk_id = None if tokenizer is None else tokenizer.unk_id
        for index, row in iter_rows(dataset, list(self.columns.values())):
            try:
                self.check_row(row, index)
                if build_samples:
                    check_sample(self(row, index), unk_id, index)
            except Exception as error:
                raise with_location(error, row_location(dataset, index), index) from error

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        raise NotImplementedError


class InstructionBuilder(_Builder):
    """Alpaca-style rows (`instruction`, optional `input`, `output`, optional `system`) as a
    one-turn chat: the user turn is the instruction (+ blank line + input).

    Args:
        tokenizer: the tokenizer.
        template: chat template (bundled name, jinja, `ChatTemplate`, or None: the tokenizer's).
        columns: map of `instruction`/`input`/`output`/`system` to the dataset's column names.
        train_on: `assistant` or `all`.
        columns_key: how errors name `columns` (a recipe passes its config key).
    """

    required = ("instruction", "output")
    column_keys = BUILDER_COLUMNS["instruction"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | ChatTemplate | None = None,
        columns: Mapping[str, str] | None = None,
        train_on: str = "assistant",
        *,
        columns_key: str = "columns",
    ) -> None:
        super().__init__(columns, columns_key)
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.train_on = train_on

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The conversation for a row."""
        prompt = self.col(row, "instruction")
        extra = self.col(row, "input")
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": self.col(row, "output")},
        ]
        system = self.col(row, "system")
        return [{"role": "system", "content": system}, *messages] if system else messages

    def check_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise naming the example and column when `instruction`/`output` is null or the
        output is empty."""
        super().check_row(row, index)
        for key in ("instruction", "output", "input", "system"):
            optional = key not in self.required
            require_string(self.col(row, key), self.columns[key], index, optional=optional)
        require_text(self.col(row, "output"), self.columns["output"], index)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        self.check_row(row, index)
        return tokenize_messages(
            self.tokenizer,
            self.template,
            self.messages(row),
            self.train_on,
            where=f"example {index}",
        )


class ChatBuilder(_Builder):
    """Conversations in a column: OpenAI (`role`/`content`) or ShareGPT (`from`/`value`) turns.

    With `style="auto"` each conversation's shape is detected (`tune.data.chat_shapes`), and
    when `columns` does not name the column, `messages` is read, or `conversations` in a dataset
    that has no `messages` column.

    Args:
        tokenizer: the tokenizer.
        template: chat template (bundled name, jinja, `ChatTemplate`, or None: the tokenizer's).
        columns: `{"messages": <column>}`.
        style: `auto`, `openai` or `sharegpt` (whose default column is `conversations`).
        train_on: `assistant` or `all`.
        columns_key: how errors name `columns` (a recipe passes its config key).
    """

    required = ("messages",)
    column_keys = BUILDER_COLUMNS["chat"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | ChatTemplate | None = None,
        columns: Mapping[str, str] | None = None,
        style: str = "auto",
        train_on: str = "assistant",
        *,
        columns_key: str = "columns",
    ) -> None:
        if style not in CHAT_SHAPES:
            raise ValueError(f"style must be one of {CHAT_SHAPES}, got {style!r}")
        self.style = style
        self._mapped = "messages" in (columns or {})
        super().__init__(columns, columns_key)
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.train_on = train_on

    def _default_columns(self) -> dict[str, str]:
        return {"messages": "conversations" if self.style == "sharegpt" else "messages"}

    def _messages_column(self, available: Any) -> str:
        """The column holding the conversation, given the dataset's (or row's) column names."""
        column = self.columns["messages"]
        if self.style != "auto" or self._mapped or column in available:
            return column
        return "conversations" if "conversations" in available else "messages"

    def validate(self, dataset: datasets.Dataset, build_samples: bool = True) -> None:
        """`_Builder.validate`, reading `conversations` in auto style when there is no
        `messages` column."""
        self.columns["messages"] = self._messages_column(dataset.column_names)
        super().validate(dataset, build_samples)

    def conversation(self, row: Mapping[str, Any], index: int) -> list[Message]:
        """The row's parsed messages; raises naming the example and message when a role or
        speaker is unknown, a message is malformed, or a trained assistant turn is empty."""
        column = self._messages_column(row)
        require_values(row, {"messages": column}, index, type(self).__name__)
        where = f"example {index}"
        parsed = to_messages(openai_messages(row.get(column), where, self.style), where)
        require_assistant_content(parsed, where)
        return parsed

    def check_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise naming the example (and message, role, allowed roles) for a bad conversation."""
        if self.style != "sharegpt" and plainly_valid(row.get(self._messages_column(row))):
            return  # the common case, without building Messages (validate runs on every row)
        self.conversation(row, index)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        parsed = self.conversation(row, index)
        return tokenize_messages(
            self.tokenizer, self.template, parsed, self.train_on, where=f"example {index}"
        )


class TextBuilder(_Builder):
    """Plain documents for continued pre-training: every token trained.

    Args:
        tokenizer: the tokenizer.
        columns: `{"text": <column>}`.
        add_bos: prepend BOS (if the tokenizer has one; never doubled).
        add_eos: append EOS.
        columns_key: how errors name `columns` (a recipe passes its config key).
    """

    required = ("text",)
    column_keys = BUILDER_COLUMNS["text"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        columns: Mapping[str, str] | None = None,
        add_bos: bool = True,
        add_eos: bool = True,
        *,
        columns_key: str = "columns",
    ) -> None:
        super().__init__(columns, columns_key)
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.add_eos = add_eos

    def check_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise naming the example and column when the text is null or not a string."""
        super().check_row(row, index)
        require_string(self.col(row, "text"), self.columns["text"], index)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        self.check_row(row, index)
        text = self.col(row, "text")
        return tokenize_text(self.tokenizer, text, self.add_bos, self.add_eos)


class PromptAnswerBuilder(_Builder):
    """Prompts with reference answers (RL): the prompt rendered with the generation prompt.

    Args:
        tokenizer: the tokenizer.
        template: chat template (bundled name, jinja, `ChatTemplate`, or None: the tokenizer's).
        columns: map of `prompt`/`answer`/`system` to the dataset's column names.
        columns_key: how errors name `columns` (a recipe passes its config key).
        **template_kwargs: extra template variables (e.g. `enable_thinking=False`).
    """

    kind = "prompt"
    required = ("prompt", "answer")
    column_keys = BUILDER_COLUMNS["prompt"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | ChatTemplate | None = None,
        columns: Mapping[str, str] | None = None,
        *,
        columns_key: str = "columns",
        **template_kwargs: Any,
    ) -> None:
        super().__init__(columns, columns_key)
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.template_kwargs = template_kwargs

    def check_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise naming the example and column when a column is null or of the wrong type."""
        super().check_row(row, index)
        prompt = self.col(row, "prompt")
        if not isinstance(prompt, str):
            if not isinstance(prompt, Sequence) or isinstance(prompt, bytes):
                expected = "a string or a list of messages"
                require_string(prompt, self.columns["prompt"], index, expected=expected)
            to_messages(prompt, f"example {index}: column {self.columns['prompt']!r}")
        require_string(self.col(row, "system"), self.columns["system"], index, optional=True)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        self.check_row(row, index)
        prompt = self.col(row, "prompt")
        messages = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        )
        system = self.col(row, "system")
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        rendered = self.template.render(
            messages, add_generation_prompt=True, where=f"example {index}", **self.template_kwargs
        )
        return {
            "prompt_tokens": self.tokenizer.encode(rendered.text, add_bos=False, add_eos=False),
            "answer": str(self.col(row, "answer")),
            "index": index,
        }


def build_sample_builder(
    tokenizer: Tokenizer,
    data_format: str,
    *,
    column_map: Mapping[str, str],
    chat_template: str | None,
    train_on_input: bool,
    key: str = "data.format",
    column_map_key: str = "data.column_map",
) -> InstructionBuilder | ChatBuilder | TextBuilder:
    """The row -> sample builder of an SFT format name, from plain (config) settings.

    Args:
        tokenizer: the model's tokenizer.
        data_format: `instruction`, `chat` (OpenAI or ShareGPT conversations, detected) or
            `text`.
        column_map: the builder's column name -> dataset column (`{"instruction": "question"}`),
            as the builders' `columns`.
        chat_template: a bundled template name, a path to a Jinja file, Jinja source, or None
            (the tokenizer's). Unused by `text`.
        train_on_input: train on every token instead of the assistant's only.
        key: the config key of `data_format`, named in errors.
        column_map_key: the config key of `column_map`, named in errors.

    Raises:
        ValueError: an unknown `data_format`, or a `column_map` key the format does not read
            (a map written `{dataset_column: expected}` is named, with the flipped map to use).
    """
    columns = dict(column_map) or None
    train_on = "all" if train_on_input else "assistant"
    if data_format == "text":
        return TextBuilder(tokenizer, columns=columns, columns_key=column_map_key)
    if data_format not in ("instruction", "chat"):
        raise ValueError(f"{key} {data_format!r}: expected instruction, chat or text")
    builder = InstructionBuilder if data_format == "instruction" else ChatBuilder
    return builder(
        tokenizer, chat_template, columns=columns, train_on=train_on, columns_key=column_map_key
    )
