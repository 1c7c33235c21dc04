"""Chat messages: a small dataclass and validation that names the offending example."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class MessageError(ValueError):
    """A conversation that is malformed or that a chat template cannot render."""


@dataclass
class Message:
    """One chat turn.

    Args:
        role: one of `system`, `user`, `assistant`, `tool`.
        content: the text of the turn.
        trainable: for assistant turns, whether its tokens are trained (False keeps it as context).
        extra: further keys passed to the template as they are (`tool_calls`, `name`,
            `reasoning_content`, ...).
    """

    role: str
    content: str
    trainable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The message as the dict a chat template sees (None-valued keys dropped, as HF does)."""
        out = {"role": self.role, "content": self.content}
        out.update({k: v for k, v in self.extra.items() if v is not None})
        return out


def to_messages(raw: Sequence[Mapping[str, Any] | Message], where: str = "") -> list[Message]:
    """Validate raw `{"role", "content", ...}` dicts into `Message`s.

    Args:
        raw: the conversation, a list of dicts (OpenAI style) or `Message`s.
        where: where the conversation comes from (e.g. `example 12`), used in error messages.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise MessageError(f"{prefix}messages must be a list of dicts, got {type(raw).__name__}")
    if len(raw) == 0:
        raise MessageError(f"{prefix}the conversation has no messages")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        if isinstance(item, Message):
            message = item
        elif isinstance(item, Mapping):
            if "role" not in item:
                raise MessageError(f"{prefix}message {i} has no 'role'; keys: {sorted(item)}")
            extra = {k: v for k, v in item.items() if k not in ("role", "content", "trainable")}
            content = item.get("content")
            if content is None and not extra.get("tool_calls"):
                raise MessageError(f"{prefix}message {i} ({item['role']}) has no 'content'")
            # datasets fills a key other messages have with None: None means the default
            trainable = item.get("trainable")
            message = Message(
                role=item["role"],
                content="" if content is None else content,
                trainable=True if trainable is None else bool(trainable),
                extra=extra,
            )
        else:
            raise MessageError(f"{prefix}message {i} must be a dict, got {type(item).__name__}")
        if message.role not in ROLES:
            raise MessageError(
                f"{prefix}message {i} has role {message.role!r}; expected one of {list(ROLES)}"
            )
        if not isinstance(message.content, str):
            raise MessageError(
                f"{prefix}message {i} content must be a string, got {type(message.content).__name__}"
            )
        messages.append(message)
    return messages
