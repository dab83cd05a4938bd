"""The whole ``chat.completion``: the non-streaming encoder of chat completions.

It takes the same :class:`~http_front.chat.present.ChatDelta` values as the
chunk stream (:mod:`http_front.chat.stream`), so the streamed and the whole
answer carry the same content.
"""

from __future__ import annotations

from typing import Any

from ..pieces import Usage
from .present import ChatDelta
from .stream import openai_usage


class WholeCompletion:
    """Collects a turn's deltas into one ``chat.completion``."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[dict[str, Any]] = []

    def add(self, delta: ChatDelta) -> None:
        if delta.call is not None:
            call = delta.call
            self._calls.append(
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            )
        if delta.content:
            self._content.append(delta.content)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def body(
        self, completion_id: str, created: int, model: str, finish_reason: str, usage: Usage
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self._calls:
            message["content"] = self.content or None
            message["tool_calls"] = self._calls
        if self._reasoning:
            message["reasoning_content"] = self.reasoning
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": openai_usage(usage),
        }
