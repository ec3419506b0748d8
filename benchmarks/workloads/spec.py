"""The unit every workload yields: one request to send (``RequestSpec``), plus how a conversation
is rendered as a plain completions prompt.

A spec holds either a raw ``prompt`` (completions) or ``messages`` (a conversation); either can be
sent over either API: ``as_prompt()`` renders a conversation as a transcript and ``as_messages()``
wraps a prompt as one user message. The transcript is built so that a conversation's next turn
starts with the previous turn's prompt followed by the text the engine generated, exactly as a chat
client that resends its history would produce, so engines can reuse the cached prefix::

    {system}\\n\\nUser: {u1}\\nAssistant:{a1}\\nUser: {u2}\\nAssistant:

An assistant message's content is inserted as is (a generated reply usually starts with a space).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class RequestSpec:
    """One request: what to send, and labels that the load generator copies into its record.

    ``timestamp`` (seconds from the start of the run) is only set by traces that carry arrival times.
    ``prompt_words`` is the workload's own size estimate (see ``workloads.words`` for tokens per word).
    """

    index: int
    max_tokens: int
    prompt: str | None = None
    messages: tuple[Message, ...] = ()
    tenant: str | None = None
    session: str | None = None
    turn: int = 0
    timestamp: float | None = None
    prompt_words: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not self.messages):
            raise ValueError("a RequestSpec needs exactly one of prompt and messages")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")

    def as_prompt(self) -> str:
        return self.prompt if self.prompt is not None else render_transcript(self.messages)

    def as_messages(self) -> tuple[Message, ...]:
        return self.messages if self.messages else (Message("user", self.prompt or ""),)

    def with_assistant_replies(self, replies: dict[int, str]) -> RequestSpec:
        """This spec with the ``k``-th assistant message's content replaced by ``replies[k]``."""
        if not replies or not self.messages:
            return self
        messages: list[Message] = []
        seen = 0
        for message in self.messages:
            if message.role == "assistant":
                if seen in replies:
                    message = Message("assistant", replies[seen])
                seen += 1
            messages.append(message)
        return replace(self, messages=tuple(messages))


def render_transcript(messages: tuple[Message, ...]) -> str:
    parts: list[str] = []
    for message in messages:
        if message.role == "system":
            parts.append(message.content + "\n\n")
        elif message.role == "user":
            parts.append("User: " + message.content + "\nAssistant:")
        else:
            parts.append(message.content + "\n")
    return "".join(parts)
