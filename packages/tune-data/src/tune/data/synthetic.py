"""Deterministic synthetic datasets and a tiny tokenizer directory, for tests, demos and benchmarks.

Instruction rows, preference pairs (paired, and unpaired for KTO), and arithmetic word problems
with verifiable answers (a toy RL task whose `messages` also serve an SFT warm-up).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from tune.data.bundled_templates import BUNDLED_TEMPLATES, bundled_template, template_control_tokens

_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "silver",
    "rocket",
    "forest",
    "candle",
    "puzzle",
    "mirror",
    "lantern",
    "harbor",
    "meadow",
    "pencil",
    "thunder",
    "violin",
    "blanket",
    "compass",
    "dolphin",
    "engine",
    "falcon",
    "glacier",
    "island",
    "jacket",
    "kettle",
    "ladder",
    "magnet",
    "needle",
    "orange",
    "parrot",
    "quartz",
    "rabbit",
    "saddle",
    "tiger",
    "umbrella",
    "valley",
    "walnut",
    "yellow",
    "zebra",
    "anchor",
    "basket",
    "copper",
    "desert",
]

# Special tokens per template family (bos/eos/pad), as the real checkpoints name them.
FAMILY_SPECIAL_TOKENS: dict[str, dict[str, str | None]] = {
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": None},
    "chatml": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen2.5": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": None},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|end|>", "pad_token": "<|endoftext|>"},
    "phi4": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "alpaca": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": None},
}


def _task(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randrange(100), rng.randrange(100)
        return {"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b)}
    if kind == 1:
        a, b = rng.randrange(20, 100), rng.randrange(20)
        return {
            "instruction": "Subtract the second number from the first.",
            "input": f"{a} and {b}",
            "output": str(a - b),
        }
    if kind == 2:
        a, b = rng.randrange(2, 13), rng.randrange(2, 13)
        return {"instruction": f"Multiply {a} by {b}.", "input": "", "output": str(a * b)}
    if kind == 3:
        word = rng.choice(_WORDS)
        return {
            "instruction": "Reverse the letters of the word.",
            "input": word,
            "output": word[::-1],
        }
    if kind == 4:
        words = rng.sample(_WORDS, rng.randrange(2, 6))
        return {
            "instruction": "Convert the words to upper case.",
            "input": " ".join(words),
            "output": " ".join(words).upper(),
        }
    if kind == 5:
        numbers = [rng.randrange(100) for _ in range(rng.randrange(3, 9))]
        return {
            "instruction": "Sort the numbers in ascending order.",
            "input": ", ".join(map(str, numbers)),
            "output": ", ".join(map(str, sorted(numbers))),
        }
    word = rng.choice(_WORDS)
    return {
        "instruction": f"How many letters are in the word '{word}'?",
        "input": "",
        "output": str(len(word)),
    }


def synthetic_instruction_rows(num_rows: int = 2000, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-style rows of small arithmetic and string tasks with verifiable answers.

    Each row has `instruction`, `input` (may be empty), `output`, and for RL a `prompt`
    (instruction + input) and `answer` (= output). The same seed always gives the same rows.

    Args:
        num_rows: number of rows.
        seed: the generator seed.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        row = _task(rng)
        row["prompt"] = (
            f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
        )
        row["answer"] = row["output"]
        rows.append(row)
    return rows


def synthetic_preference_rows(num_rows: int = 200, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs from the instruction tasks: `chosen` is the answer, `rejected` a wrong one.

    Args:
        num_rows: number of rows.
        seed: the generator seed.
    """
    rng = random.Random(seed + 1)
    rows = []
    for row in synthetic_instruction_rows(num_rows, seed):
        wrong = row["output"][::-1] + str(rng.randrange(10)) if row["output"] else "no"
        rows.append({"prompt": row["prompt"], "chosen": row["output"], "rejected": wrong})
    return rows


def synthetic_unpaired_rows(num_rows: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Unpaired (KTO) rows: each pair of `synthetic_preference_rows` split into its desirable
    (`label` True) and undesirable (`label` False) completion of the same prompt.

    Args:
        num_rows: number of rows (pairs of consecutive rows share a prompt).
        seed: the generator seed.
    """
    rows: list[dict[str, Any]] = []
    for pair in synthetic_preference_rows(num_rows // 2 + 1, seed):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows[:num_rows]


def write_preference_data(
    directory: str | Path, *, num_rows: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Write `paired.jsonl` (`synthetic_preference_rows`) and `unpaired.jsonl`
    (`synthetic_unpaired_rows`, the same answers as KTO rows) under `directory`.

    Returns `{"paired": path, "unpaired": path}`.
    """
    directory = Path(directory)
    return {
        "paired": write_jsonl(
            synthetic_preference_rows(num_rows, seed), directory / "paired.jsonl"
        ),
        "unpaired": write_jsonl(
            synthetic_unpaired_rows(num_rows, seed), directory / "unpaired.jsonl"
        ),
    }


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines.

    Args:
        rows: JSON-serialisable dicts.
        path: the file to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


_NAMES = ["Ana", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kai", "Lea"]
_ITEMS = ["apples", "books", "coins", "pens", "shells", "stickers", "marbles", "cards"]
_ADD = [
    "{name} has {a} {item}. {name} finds {b} more. How many {item} does {name} have now?",
    "{name} had {a} {item} and got {b} more. How many {item} does {name} have?",
]
_SUB = [
    "{name} has {a} {item}. {name} gives away {b}. How many {item} are left?",
    "{name} had {a} {item} and lost {b}. How many {item} does {name} have?",
]

# The reference completion of an arithmetic problem (what a format reward can check for).
ARITHMETIC_COMPLETION_FORMAT = "Answer: {answer}"


def arithmetic_word_problem(
    rng: random.Random, max_total: int = 9, max_change: int = 3, teacher_mistakes: float = 0.0
) -> dict[str, Any]:
    """One word problem: an amount plus or minus a change, every number in `[0, max_total]`.

    Returns `prompt`, `answer` (the integer as text) and `messages` (the prompt and the
    reference completion `"Answer: <n>"`, for an SFT warm-up on the same task as chat).

    Args:
        rng: the random source.
        max_total: largest amount, before or after the change (9: single-digit answers).
        max_change: largest change, at least 1.
        teacher_mistakes: probability that a subtraction's demonstration (`messages`) adds
            instead, as a weak teacher would; `answer` is always right.
    """
    if max_change < 1 or max_total < max_change:
        raise ValueError(
            f"arithmetic problems need 1 <= max_change <= max_total, got max_change={max_change}, "
            f"max_total={max_total}"
        )
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    b = rng.randint(1, max_change)
    if rng.random() < 0.5:
        a = rng.randint(0, max_total - b)
        prompt, answer = rng.choice(_ADD).format(name=name, item=item, a=a, b=b), a + b
        shown = answer
    else:
        a = rng.randint(b, max_total)
        prompt, answer = rng.choice(_SUB).format(name=name, item=item, a=a, b=b), a - b
        shown = a + b if rng.random() < teacher_mistakes else answer
    completion = ARITHMETIC_COMPLETION_FORMAT.format(answer=shown)
    return {
        "prompt": prompt,
        "answer": str(answer),
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ],
    }


def arithmetic_rows(
    num_rows: int,
    *,
    seed: int = 0,
    max_total: int = 9,
    max_change: int = 3,
    teacher_mistakes: float = 0.0,
) -> list[dict[str, Any]]:
    """`num_rows` arithmetic word problems (`arithmetic_word_problem`), a toy RL task with
    verifiable answers; the same seed always gives the same rows.

    Args:
        num_rows: number of rows.
        seed: the generator seed (different seeds give different, possibly overlapping, problems).
        max_total: largest amount, before or after the change.
        max_change: largest amount added or taken away.
        teacher_mistakes: share of subtraction demonstrations that add instead.
    """
    if num_rows <= 0:
        raise ValueError(f"num_rows must be > 0, got {num_rows}")
    rng = random.Random(seed)
    return [
        arithmetic_word_problem(rng, max_total, max_change, teacher_mistakes)
        for _ in range(num_rows)
    ]


def write_arithmetic_task(path: str | Path, num_rows: int, **options: Any) -> Path:
    """Write `arithmetic_rows(num_rows, **options)` as JSON lines to `path`; returns the path.

    Args:
        path: the file to write (parents are created).
        num_rows: number of rows.
        **options: `seed`, `max_total`, `max_change`, `teacher_mistakes` of `arithmetic_rows`.
    """
    return write_jsonl(arithmetic_rows(num_rows, **options), path)


def _corpus(extra: Iterable[str]) -> list[str]:
    texts = [
        f"{r['instruction']}\n\n{r['input']}\n{r['output']}"
        for r in synthetic_instruction_rows(500, 1)
    ]
    texts.append(" ".join(_WORDS))
    texts.extend(extra)
    return texts


def save_tiny_tokenizer(
    path: str | Path,
    template: str = "chatml",
    vocab_size: int = 512,
    pad_token: str | None = "default",
    extra_text: Iterable[str] = (),
) -> Path:
    """Train a byte-level BPE offline and save an HF tokenizer directory with a chat template.

    The directory holds `tokenizer.json` and `tokenizer_config.json` (special tokens and the
    bundled `chat_template`); `transformers.AutoTokenizer` and `tune.data.Tokenizer` both load it.

    Args:
        path: the directory to create.
        template: a bundled template name; sets the special tokens of that family.
        vocab_size: BPE vocabulary size (at least 256 byte tokens + specials).
        pad_token: `default` (the family's), None (no pad token: pad falls back to EOS), or a token.
        extra_text: more training text.
    """
    if template not in BUNDLED_TEMPLATES:
        raise KeyError(f"unknown template {template!r}; available: {list(BUNDLED_TEMPLATES)}")
    specials = dict(FAMILY_SPECIAL_TOKENS[template])
    if pad_token != "default":
        specials["pad_token"] = pad_token
    tokens = [t for t in specials.values() if t] + list(template_control_tokens(template))
    tokens = list(dict.fromkeys(tokens))
    backend = _RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(extra_text), trainer)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "chat_template": bundled_template(template),
        **{name: value for name, value in specials.items() if value},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory
