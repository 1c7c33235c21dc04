"""When a generated completion ends: stop token ids during decoding, stop strings in its text.

Token ids stop ``generate`` at once (``stop_tokens=rules.token_ids``); stop strings are found in
the decoded text afterwards, since a string can span several tokens or be part of one. Text comes
from the caller's ``decode`` callable, so any tokenizer serves::

    rules = build_stop_rules(eos_ids=[eos], stop_strings=["\\n\\n"], token_to_id=tok.token_to_id)
    rows = generate(model, prompts, max_new_tokens=64, stop_tokens=rules.token_ids)
    done = [finish_completion(row, tok.decode, rules) for row in rows]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def checkpoint_eos_ids(checkpoint_dir: str | Path) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` and ``config.json`` (an int or a list each),
    in that order, without repeats; missing files and keys give none."""
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
        """The stop token ids, sorted, for ``generate(stop_tokens=...)``."""
        return sorted(self.token_reasons)


def build_stop_rules(
    *,
    eos_ids: Sequence[int] = (),
    stop_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    token_to_id: Callable[[str], int | None] | None = None,
) -> StopRules:
    """Stop tokens (EOS ids, further ids) and stop strings.

    A stop string that is one vocabulary token (``<|im_end|>``, found by ``token_to_id``) also
    stops decoding at once. When an id has several reasons, ``eos`` wins over ``stop_token``,
    which wins over ``stop_string``.

    Args:
        eos_ids: end-of-sequence ids (the tokenizer's, ``checkpoint_eos_ids``); reason ``eos``.
        stop_token_ids: further ids; reason ``stop_token``.
        stop_strings: text that ends a completion.
        token_to_id: vocabulary lookup of a whole token (None: stop strings act on text only).
    """
    reasons: dict[int, str] = {}
    for text in stop_strings:
        token = token_to_id(text) if token_to_id is not None else None
        if token is not None:
            reasons[token] = "stop_string"
    reasons.update(dict.fromkeys(stop_token_ids, "stop_token"))
    reasons.update(dict.fromkeys(eos_ids, "eos"))
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
    generated: Sequence[int], decode: Callable[[list[int]], str], rules: StopRules
) -> Completion:
    """Decode one row of generated ids and apply the stop rules.

    Args:
        generated: the decoder's new tokens of the row (ending at a stop token, if one came).
        decode: token ids -> text (e.g. ``partial(tokenizer.decode, skip_special_tokens=True)``).
        rules: the stop rules the row was decoded with.
    """
    ids = list(generated)
    reason = "length"
    if ids and ids[-1] in rules.token_reasons:
        reason = rules.token_reasons[ids[-1]]
        ids = ids[:-1]
    text = decode(ids)
    hits = [(text.find(s), s) for s in rules.strings if s and s in text]
    if not hits:
        return Completion(text, len(generated), reason)
    cut, first = min(hits)
    # The fewest tokens whose text already holds the stop string: the tokens it really used.
    used = next(k for k in range(1, len(ids) + 1) if first in decode(ids[:k]))
    return Completion(text[:cut], used, "stop_string")
