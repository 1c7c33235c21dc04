"""Deterministic synthetic datasets and a tiny tokenizer directory, for tests, demos and benchmarks."""

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
