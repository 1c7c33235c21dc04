"""Preference data: paired (`prompt`, `chosen`, `rejected`) and unpaired KTO rows (`prompt`,
`completion`, `label`), both as pair-shaped samples `collate_preference` pads into one batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from tune.data.builders import _Builder, resolve_template
from tune.data.chat_template import ChatTemplate
from tune.data.column_maps import BUILDER_COLUMNS, column_map_problem
from tune.data.errors import DataSourceError
from tune.data.masking import tokenize_messages
from tune.data.messages import to_messages
from tune.data.row_checks import require_distinct_replies, require_string
from tune.data.sources import require_columns
from tune.data.tokenizer import Tokenizer


class PreferenceBuilder(_Builder):
    """Preference pairs: `prompt` (string or messages) with `chosen` and `rejected` replies
    (strings or assistant messages), or full `chosen`/`rejected` conversations without a prompt.

    Args:
        tokenizer: the tokenizer.
        template: chat template (bundled name, jinja, `ChatTemplate`, or None: the tokenizer's).
        columns: map of `prompt`/`chosen`/`rejected` to the dataset's column names.
        columns_key: how errors name `columns` (a recipe passes its config key).
    """

    kind = "preference"
    required = ("chosen", "rejected")
    column_keys = BUILDER_COLUMNS["paired"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | ChatTemplate | None = None,
        columns: Mapping[str, str] | None = None,
        *,
        columns_key: str = "columns",
    ) -> None:
        super().__init__(columns, columns_key)
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)

    def check_row(self, row: Mapping[str, Any], index: int) -> None:
        """Raise naming the example and column when the prompt or a reply is of the wrong type,
        a reply is empty, or both replies are identical."""
        super().check_row(row, index)
        prompt = self.col(row, "prompt")
        if prompt is not None and not isinstance(prompt, str):
            if not isinstance(prompt, Sequence) or isinstance(prompt, bytes):
                expected = "a string or a list of messages"
                require_string(prompt, self.columns["prompt"], index, expected=expected)
            to_messages(prompt, f"example {index}: column {self.columns['prompt']!r}")
        require_distinct_replies(row, self.columns, index)

    def _conversation(self, prompt: Any, reply: Any) -> list[dict[str, Any]]:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = list(prompt or [])
        if isinstance(reply, str):
            reply = [{"role": "assistant", "content": reply}]
        return [*prompt, *reply]

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        self.check_row(row, index)
        where = f"example {index}"
        prompt = self.col(row, "prompt")
        out: dict[str, Any] = {}
        for side in ("chosen", "rejected"):
            messages = self._conversation(prompt, self.col(row, side))
            sample = tokenize_messages(
                self.tokenizer, self.template, messages, where=f"{where} ({side})"
            )
            out[f"{side}_tokens"] = sample["tokens"]
            out[f"{side}_labels"] = sample["labels"]
        return out


def _as_flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise DataSourceError(
        f"{where}: label must be a boolean (true = desirable completion), got {value!r}"
    )


class UnpairedBuilder:
    """Unpaired (KTO) rows `prompt`/`completion`/`label` as pair-shaped samples: `chosen_*` is
    the example, `rejected_*` the same prompt with the completion of the next row (the
    mismatched pair KTO's reference point z0 is estimated on), and `desirable` the label.

    A `StreamingLoader` of these samples collates `desirable` ([B] bool) next to the [2B, T]
    tensors (see `collate_preference`).

    Args:
        tokenizer: the tokenizer.
        template: chat template (bundled name, jinja, `ChatTemplate`, or None: the tokenizer's).
        dataset: the dataset the loader reads (its completions make the mismatched pairs).
        columns: map of `prompt`/`completion`/`label` to the dataset's column names.
        columns_key: how errors name `columns` (a recipe passes its config key).

    Raises:
        ValueError: an unknown key in `columns`.
        DataSourceError: a mapped column is missing (the available ones are named).
    """

    kind = "preference"
    column_keys = BUILDER_COLUMNS["unpaired"]

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | ChatTemplate | None,
        dataset: datasets.Dataset,
        columns: Mapping[str, str] | None = None,
        *,
        columns_key: str = "columns",
    ) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.columns_key = columns_key
        problem = column_map_problem(columns or {}, self.column_keys, columns_key)
        if problem:
            raise ValueError(problem)
        self.columns = {key: key for key in self.column_keys}
        self.columns.update(columns or {})
        self.validate(dataset)
        self.completions = list(dataset[self.columns["completion"]])

    def validate(self, dataset: datasets.Dataset) -> None:
        """Raise naming the missing columns (rows are checked as they are built)."""
        require_columns(
            dataset, self.columns, "unpaired (KTO) dataset", columns_key=self.columns_key
        )

    def _tokenize(self, prompt: Any, completion: Any, where: str) -> dict[str, list[int]]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        reply = (
            [{"role": "assistant", "content": completion}]
            if isinstance(completion, str)
            else completion
        )
        return tokenize_messages(self.tokenizer, self.template, [*messages, *reply], where=where)

    def __call__(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        where = f"example {index}"
        prompt = row[self.columns["prompt"]]
        example = self._tokenize(prompt, row[self.columns["completion"]], where)
        other = self.completions[(index + 1) % len(self.completions)]
        mismatched = self._tokenize(prompt, other, f"{where} (mismatched completion)")
        return {
            "chosen_tokens": example["tokens"],
            "chosen_labels": example["labels"],
            "rejected_tokens": mismatched["tokens"],
            "rejected_labels": mismatched["labels"],
            "desirable": _as_flag(
                row[self.columns["label"]], f"{where}, column {self.columns['label']!r}"
            ),
        }
