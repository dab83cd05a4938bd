"""OpenAI ``chat.completion.chunk`` frames as Server-Sent Events: the
streaming encoder of chat completions.

The per-delta path is the hot one (tens of thousands of frames a second), so
the constant part of every chunk is serialised once per stream and only the
delta text goes through the JSON encoder.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ApiError
from ..pieces import ClientCall, Usage
from .present import ChatDelta

DONE = b"data: [DONE]\n\n"


def openai_usage(usage: Usage) -> dict[str, Any]:
    """``usage`` as chat completions report it."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChunkEncoder:
    """Builds the SSE frames of one streamed completion."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = model
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        # b'data: {"id":...,"model":"m","choices":[{"index":0,"delta":{'
        self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":{'
        self._content_key = b'"content":'
        self._reasoning_key = b'"reasoning_content":'
        self._tail = b'},"finish_reason":null}]}\n\n'
        self._calls = 0  # tool calls so far: each one's index

    def _chunk(self, extra: dict[str, Any]) -> bytes:
        body = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        body.update(extra)
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        return self._head + b'"role":"assistant","content":""' + self._tail

    def delta(self, piece: ChatDelta) -> bytes:
        if piece.call is not None:
            return self._call(piece.call)
        if piece.content and not piece.reasoning:
            return self._head + self._content_key + orjson.dumps(piece.content) + self._tail
        if piece.status is not None:
            # OpenWebUI's status line; no `choices`, so only sent when enabled.
            event = {
                "type": "status",
                "data": {"description": piece.status.description, "done": piece.status.done},
            }
            return b"data: " + orjson.dumps({"event": event}) + b"\n\n"
        delta: dict[str, str] = {}
        if piece.reasoning:
            delta["reasoning_content"] = piece.reasoning
        if piece.content:
            delta["content"] = piece.content
        return self._head + orjson.dumps(delta)[1:-1] + self._tail

    def _call(self, call: ClientCall) -> bytes:
        """A call of the client's function: its id and name, then its arguments."""
        index = self._calls
        self._calls += 1
        opening = {
            "index": index,
            "id": call.call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        arguments = {"index": index, "function": {"arguments": call.arguments}}
        return b"".join(
            self._head + orjson.dumps({"tool_calls": [part]})[1:-1] + self._tail
            for part in (opening, arguments)
        )

    def finish(self, finish_reason: str) -> bytes:
        return self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})

    def usage(self, usage: Usage) -> bytes:
        return self._chunk({"choices": [], "usage": openai_usage(usage)})

    def error(self, failure: ApiError) -> bytes:
        return self._chunk(
            {
                "choices": [],
                "error": {
                    "message": failure.message,
                    "type": failure.type,
                    "param": None,
                    "code": failure.code,
                },
            }
        )
