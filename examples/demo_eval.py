"""Greedy answers of a saved model to the demo's questions, in chat form or in plain text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tune.data import ChatTemplate, Tokenizer, resolve_template
from tune.models import generate
from tune.recipes.common.model_loading import load_pretrained


@dataclass
class Answer:
    """One greedy answer: the response text and whether the model ended it itself."""

    question: str
    expected: str
    response: str
    ended: bool

    @property
    def correct(self) -> bool:
        """Exact match: the model ended its response and it equals the answer (outer spaces aside)."""
        return self.ended and self.response.strip() == self.expected


class Answerer:
    """A saved HF directory loaded for greedy generation.

    Args:
        model_dir: an HF directory (config.json, safetensors, tokenizer files).
        max_new_tokens: most tokens generated per answer.
    """

    def __init__(self, model_dir: str | Path, max_new_tokens: int = 16) -> None:
        self.max_new_tokens = max_new_tokens
        self.model = load_pretrained(
            model_dir, dtype=torch.float32, device=torch.device("cpu")
        ).model
        self.tok = Tokenizer.from_dir(model_dir)
        self.template: ChatTemplate = resolve_template(self.tok, None)
        if self.tok.eos_id is None:
            raise ValueError(f"{model_dir}: the tokenizer has no eos_token")

    def _answers(
        self, texts: list[str], rows: list[dict[str, str]], stop: int, questions: list[str]
    ) -> list[Answer]:
        prompts = [self.tok.encode(t, add_bos=False, add_eos=False) for t in texts]
        outputs = generate(
            self.model, prompts, max_new_tokens=self.max_new_tokens, stop_tokens=[stop],
            pad_id=self.tok.pad_id,
        )  # fmt: skip
        answers = []
        for row, question, out in zip(rows, questions, outputs, strict=True):
            ended = stop in out
            response = self.tok.decode(out[: out.index(stop)] if ended else out)
            answers.append(Answer(question, row["answer"], response, ended))
        return answers

    def chat(self, rows: list[dict[str, str]], system: str | None = None) -> list[Answer]:
        """Answers in chat: the user turn is the question; the response ends at end-of-turn.

        Args:
            rows: ``{"question", "answer"}`` facts.
            system: a system message before the question (None: the template's default, if any).
        """
        questions = [r["question"] for r in rows]
        head = [] if system is None else [{"role": "system", "content": system}]
        texts = [
            self.template.render(
                [*head, {"role": "user", "content": q}], add_generation_prompt=True
            ).text
            for q in questions
        ]
        assert self.tok.eos_id is not None
        return self._answers(texts, rows, self.tok.eos_id, questions)

    def plain_text(self, rows: list[dict[str, str]]) -> list[Answer]:
        """Answers in the pre-training format: ``Question: ...\\nAnswer:``, ending at a newline.

        Args:
            rows: ``{"question", "answer"}`` facts.
        """
        newline = self.tok.encode("\n", add_bos=False, add_eos=False)
        if len(newline) != 1:
            raise ValueError(f"expected a single newline token, got {newline}")
        questions = [r["question"] for r in rows]
        texts = [f"Question: {q}\nAnswer:" for q in questions]
        return self._answers(texts, rows, newline[0], questions)


def exact_match(answers: list[Answer]) -> float:
    """Share of correct answers."""
    return sum(a.correct for a in answers) / len(answers)
