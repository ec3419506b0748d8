"""Chat messages to prompt text with a ChatML template, as an engine's chat template would do.

Rendering chat into text before tokenizing makes prefix caching work for chat exactly as for
completions (a conversation that grows by turns shares its leading blocks).

    <|im_start|>{role}\\n{content}<|im_end|>\\n ... [<|im_start|>assistant\\n]

``add_generation_prompt`` (default) opens the assistant turn. ``continue_final_message`` leaves the
last message open instead (no ``<|im_end|>``), so the model continues it; vLLM's rule that the two
cannot both be set is the caller's to enforce. Content may be a string, ``None`` or a list of parts;
only ``{"type": "text"}`` parts carry text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.sim.tokenizer import IM_END, IM_START


class ChatFormatError(ValueError):
    """A message list the template cannot render; ``param`` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def message_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ChatFormatError(f"messages[{index}].content parts must be objects with a type",
                                      f"messages.{index}.content")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ChatFormatError(f"messages[{index}].content text part needs a string text",
                                          f"messages.{index}.content")
                texts.append(text)
        return "".join(texts)
    raise ChatFormatError(f"messages[{index}].content must be a string or a list of parts",
                          f"messages.{index}.content")


def render_chat(messages: Sequence[Any], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False) -> str:
    if not isinstance(messages, list | tuple) or not messages:
        raise ChatFormatError("messages must be a non-empty list", "messages")
    parts: list[str] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"messages[{index}] must be an object", f"messages.{index}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ChatFormatError(f"messages[{index}].role must be a non-empty string",
                                  f"messages.{index}.role")
        text = message_text(message.get("content"), index)
        parts.append(f"{IM_START}{role}\n{text}")
        if not (continue_final_message and index == last):
            parts.append(f"{IM_END}\n")
    if add_generation_prompt and not continue_final_message:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)
