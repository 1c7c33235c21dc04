"""Conversations in the two shapes found in datasets, as OpenAI messages.

OpenAI: `[{"role": "user", "content": ...}, ...]`. ShareGPT: `[{"from": "human", "value": ...},
...]` with `from` one of `system`, `human`/`user`, `gpt`/`assistant`, or a tool turn
(`tool`, `observation`, `function_response`). `openai_messages` converts either (detected per
conversation with `shape="auto"`); builders and other loops can call it on raw rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tune.data.messages import MessageError

CHAT_SHAPES = ("auto", "openai", "sharegpt")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}


def chat_shape(conversation: Any) -> str:
    """`sharegpt` when the first turn has a `from` key and no `role`, else `openai`.

    Args:
        conversation: a raw conversation (a list of dicts).
    """
    if isinstance(conversation, Sequence) and not isinstance(conversation, (str, bytes)):
        first = conversation[0] if len(conversation) else None
        if isinstance(first, Mapping) and "from" in first and first.get("role") is None:
            return "sharegpt"
    return "openai"


def sharegpt_to_messages(
    conversation: Sequence[Mapping[str, Any]], where: str
) -> list[dict[str, Any]]:
    """Convert ShareGPT turns (`{"from": "human"|"gpt"|..., "value": ...}`) to OpenAI messages.

    Args:
        conversation: the ShareGPT turns.
        where: where the conversation comes from (e.g. `example 12`), for errors.

    Raises:
        MessageError: naming `where` and the turn, for a turn that is not a dict or whose
            `from` is not a known speaker.
    """
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise MessageError(
            f"{where}: a ShareGPT conversation must be a list of turns, got "
            f"{type(conversation).__name__}"
        )
    out = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, Mapping):
            raise MessageError(f"{where}: turn {i} must be a dict, got {type(turn).__name__}")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise MessageError(
                f"{where}: turn {i} has 'from'={speaker!r}; expected one of {sorted(SHAREGPT_ROLES)}"
            )
        out.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
    return out


def openai_messages(conversation: Any, where: str = "", shape: str = "auto") -> Any:
    """The conversation as OpenAI messages (`role`/`content` dicts).

    Args:
        conversation: a raw conversation in OpenAI or ShareGPT shape.
        where: where it comes from (e.g. `example 12`), for errors.
        shape: `openai` (returned as it is), `sharegpt`, or `auto` (see `chat_shape`).

    Raises:
        ValueError: an unknown `shape`.
        MessageError: a ShareGPT turn with an unknown speaker (see `sharegpt_to_messages`).
    """
    if shape not in CHAT_SHAPES:
        raise ValueError(f"chat shape must be one of {CHAT_SHAPES}, got {shape!r}")
    if shape == "auto":
        shape = chat_shape(conversation)
    return sharegpt_to_messages(conversation, where) if shape == "sharegpt" else conversation
