"""The demo's task: a fixed universe of small verifiable facts, as plain text and as chat.

The bundled base model (examples/assets/demo-base, made by make_demo_base.py) was pre-trained on
every fact written as plain text, in several page layouts ("Question: ... / Answer: ...",
"Q: ... / A: ...", ...); it has never seen a chat turn.
The demo fine-tunes it with LoRA on the chat form of most facts and measures, on held-out facts
whose chat form it never trained on, whether it now answers in chat with exactly the right answer.
"""

from __future__ import annotations

import random
from typing import Any

WORDS = [
    "apple", "river", "stone", "cloud", "garden", "window", "silver", "rocket", "forest",
    "candle", "puzzle", "mirror", "lantern", "harbor", "meadow", "pencil", "thunder", "violin",
    "blanket", "compass", "dolphin", "engine", "falcon", "glacier", "island", "jacket", "kettle",
    "ladder", "magnet", "needle", "orange", "parrot", "quartz", "rabbit", "saddle", "tiger",
    "umbrella", "valley", "walnut", "yellow", "zebra", "anchor", "basket", "copper", "desert",
]  # fmt: skip


def facts() -> list[dict[str, str]]:
    """Every fact of the task, in a fixed order: ``{"kind", "question", "answer"}`` rows."""
    rows: list[dict[str, str]] = []

    def add(kind: str, question: str, answer: Any) -> None:
        rows.append({"kind": kind, "question": question, "answer": str(answer)})

    for a in range(2, 10):
        for b in range(2, 10):
            add("times", f"What is {a} times {b}?", a * b)
    for a in range(1, 13):
        for b in range(1, 13):
            add("plus", f"What is {a} plus {b}?", a + b)
    for n in range(60):
        add("next", f"What number comes after {n}?", n + 1)
    for word in WORDS:
        add("reverse", f"Reverse the word {word}.", word[::-1])
        add("length", f"How many letters are in {word}?", len(word))
        add("upper", f"Write {word} in capitals.", word.upper())
        add("first", f"What is the first letter of {word}?", word[0])
    return rows


# Layouts of the pre-training pages: the facts appear after many kinds of separators, as on the
# web, so that what the base knows is not tied to one layout. None of them is a chat template.
TEXT_LAYOUTS = (
    "Question: {q}\nAnswer: {a}\n",
    "Q: {q}\nA: {a}\n",
    "{q}\n{a}\n",
    "{q} {a}\n",
    "User: {q}\nAssistant: {a}\n",
    "> {q}\n{a}\n\n",
)


def as_text(row: dict[str, str], layout: int = 0) -> str:
    """A fact in plain text, in one of ``TEXT_LAYOUTS`` (0: "Question: ... / Answer: ...")."""
    return TEXT_LAYOUTS[layout].format(q=row["question"], a=row["answer"])


def pretraining_documents(
    rows: list[dict[str, str]], num_documents: int, facts_per_document: int = 6, seed: int = 0
) -> list[dict[str, str]]:
    """``{"text": ...}`` rows: pages of a few facts, each page in one random layout.

    Args:
        rows: the facts (every fact the base model should know).
        num_documents: documents to write.
        facts_per_document: facts per document.
        seed: sampling seed.
    """
    rng = random.Random(seed)
    order: list[dict[str, str]] = []
    docs = []
    for _ in range(num_documents):
        layout = rng.randrange(len(TEXT_LAYOUTS))
        page = []
        for _ in range(facts_per_document):
            if not order:  # every fact once per pass, in a fresh order each pass
                order = list(rows)
                rng.shuffle(order)
            page.append(as_text(order.pop(), layout))
        docs.append({"text": "".join(page)})
    return docs


def as_chat(row: dict[str, str]) -> dict[str, Any]:
    """One chat conversation (the ``messages`` column of ``data.format=chat``)."""
    return {
        "messages": [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ],
        "kind": row["kind"],
    }
