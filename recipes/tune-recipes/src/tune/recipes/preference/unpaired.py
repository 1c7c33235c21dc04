"""Unpaired (KTO) data: each example, plus its prompt with a mismatched completion for z0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import torch

from tune.data import (
    DataSourceError,
    StreamingLoader,
    Tokenizer,
    require_columns,
    resolve_template,
    tokenize_messages,
)


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
    """Rows ``prompt``/``completion``/``label`` -> a pair-shaped sample the preference loader
    collates: ``chosen_*`` is the example, ``rejected_*`` the same prompt with the completion of
    the next row (the mismatched pair KTO's reference point is estimated on), ``desirable``.

    Args:
        tokenizer: the tokenizer.
        template: chat template (bundled name, jinja, or None: the tokenizer's).
        dataset: the dataset the loader reads (its completions make the mismatched pairs).
        columns: map of ``prompt``/``completion``/``label`` to the dataset's column names.

    Raises:
        DataSourceError: a mapped column is missing (the available ones are named).
    """

    kind = "preference"

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | None,
        dataset: datasets.Dataset,
        columns: Mapping[str, str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.columns = {"prompt": "prompt", "completion": "completion", "label": "label"}
        unknown = set(columns or {}) - set(self.columns)
        if unknown:
            raise ValueError(
                f"data.column_map: unknown unpaired column(s) {sorted(unknown)}; "
                f"expected {sorted(self.columns)}"
            )
        self.columns.update(columns or {})
        self.validate(dataset)
        self.completions = list(dataset[self.columns["completion"]])

    def validate(self, dataset: datasets.Dataset) -> None:
        """Raise naming the missing columns."""
        require_columns(dataset, list(self.columns.values()), "unpaired (KTO) dataset")

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


class UnpairedLoader(StreamingLoader):
    """A ``StreamingLoader`` of ``UnpairedBuilder`` samples whose batches also carry
    ``desirable`` ([B] bool) next to the [2B, T] tensors."""

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super()._collate(items)
        batch["desirable"] = torch.tensor([bool(s["desirable"]) for s in items], dtype=torch.bool)
        return batch
