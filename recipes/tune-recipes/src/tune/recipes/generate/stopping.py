"""When a completion ends: EOS and stop token ids during decoding, stop strings afterwards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.data import Tokenizer


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def checkpoint_eos_ids(checkpoint_dir: str | Path) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` and ``config.json`` (an int or a list)."""
    found: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = Path(checkpoint_dir) / name
        if path.is_file():
            found.extend(_ids(json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class StopRules:
    """What ends a completion.

    Args:
        token_reasons: token id -> why it stops (``eos``, ``stop_token`` or ``stop_string``);
            decoding of a row ends at the first of these tokens.
        strings: text that ends a completion; it and everything after it are cut.
    """

    token_reasons: dict[int, str]
    strings: tuple[str, ...] = ()

    @property
    def token_ids(self) -> list[int]:
        """The stop token ids, for the decoder."""
        return sorted(self.token_reasons)


def build_stop_rules(
    tokenizer: Tokenizer,
    checkpoint_dir: str | Path,
    *,
    stop_at_eos: bool,
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
) -> StopRules:
    """Stop tokens (EOS of the tokenizer and checkpoint, extra ids) and stop strings.

    A stop string that is one vocabulary token (``<|im_end|>``) also stops decoding at once.

    Args:
        tokenizer: the model's tokenizer.
        checkpoint_dir: where ``generation_config.json`` / ``config.json`` name EOS ids.
        stop_at_eos: include the EOS ids.
        stop_token_ids: further ids.
        stop_strings: stop strings.
    """
    reasons: dict[int, str] = {}
    for text in stop_strings:
        token = tokenizer.token_to_id(text)
        if token is not None:
            reasons[token] = "stop_string"
    for token in stop_token_ids:
        reasons[token] = "stop_token"
    if stop_at_eos:
        eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        for token in [*eos, *checkpoint_eos_ids(checkpoint_dir)]:
            reasons[token] = "eos"
    return StopRules(reasons, tuple(stop_strings))


@dataclass(frozen=True)
class Completion:
    """A finished completion.

    Args:
        text: the completion text (stop token and stop string excluded).
        num_tokens: generated tokens it used, the stop token included.
        stop_reason: ``eos``, ``stop_token``, ``stop_string`` or ``length``.
    """

    text: str
    num_tokens: int
    stop_reason: str


def finish_completion(
    generated: Sequence[int], tokenizer: Tokenizer, rules: StopRules, skip_special_tokens: bool
) -> Completion:
    """Decode one row of generated ids and apply the stop rules.

    Args:
        generated: the decoder's new tokens of the row (ending at a stop token, if one came).
        tokenizer: the model's tokenizer.
        rules: the stop rules the row was decoded with.
        skip_special_tokens: leave special tokens out of the text.
    """
    ids = list(generated)
    reason = "length"
    if ids and ids[-1] in rules.token_reasons:
        reason = rules.token_reasons[ids[-1]]
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    hits = [(text.find(s), s) for s in rules.strings if s and s in text]
    if not hits:
        return Completion(text, len(generated), reason)
    cut, first = min(hits)
    # The fewest tokens whose text already holds the stop string: the tokens it really used.
    used = next(
        k
        for k in range(1, len(ids) + 1)
        if first in tokenizer.decode(ids[:k], skip_special_tokens=skip_special_tokens)
    )
    return Completion(text[:cut], used, "stop_string")
