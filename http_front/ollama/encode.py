"""Pieces → Ollama's answers: NDJSON lines streamed, or one JSON object.

:class:`OllamaPresenter` decides what a turn shows — the answer text in
``content`` (``response`` for generate), codex's activity as the same cards
chat completions show, the reasoning in ``thinking`` — using the chat
presenter, with the request's stop sequences applied to the answer text.
:class:`OllamaEncoder` writes its deltas as Ollama's chunks (one JSON object
a line, ``done: false``) and the last object (``done: true``, the reason,
token counts and durations); both the stream and the whole answer are built
from the same deltas, so they cannot differ.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import orjson

from supervisor import Turn

from ..chat.present import ChatDelta, ChatOptions, ChatPresenter
from ..pieces import ClientCall, Piece, Reasoning, Status, Text, Usage
from ..stop import StopScanner
from .tools import tool_call

Api = Literal["chat", "generate"]

NDJSON_HEADERS = (
    (b"content-type", b"application/x-ndjson"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
)


def timestamp() -> str:
    """Now, as Ollama's ``created_at`` gives it (RFC 3339, UTC)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


class OllamaPresenter:
    """One turn's pieces as (content, thinking) deltas, stop sequences applied.

    A stop sequence ends the answer: the text before it is the last shown,
    and nothing of the turn is shown after it (:attr:`stopped`: the door
    then leaves the turn, which interrupts it in codex). Stop sequences
    apply to the answer text only; text held back because it might begin
    one is let out before a card, and at the end.
    """

    def __init__(self, options: ChatOptions, stops: Sequence[str] = ()) -> None:
        self._chat = ChatPresenter(options)
        self._stop = StopScanner(stops)

    @property
    def shown(self) -> int:
        """Deltas given out so far: whether the client has seen anything."""
        return self._chat.shown

    @property
    def stopped(self) -> bool:
        return self._stop.stopped

    @property
    def calls(self) -> list[ClientCall]:
        """The client's function calls the answer ends with."""
        return self._chat.calls

    def content(self) -> str:
        """The answer's content as given out (what the client sends back as history)."""
        return self._chat.content()

    def present(self, piece: Piece) -> list[ChatDelta]:
        stop = self._stop
        if not stop:
            return self._chat.present(piece)
        if stop.stopped:
            return []
        if isinstance(piece, Text):
            return self._chat.present(Text(stop.feed(piece.text), piece.new_paragraph))
        if isinstance(piece, Reasoning | Status):
            return self._chat.present(piece)
        # A card: what was held back goes before it.
        return [*self.finish(), *self._chat.present(piece)]

    def finish(self) -> list[ChatDelta]:
        """What was held back, at the end of the answer (or before a card)."""
        rest = self._stop.flush()
        return self._chat.present(Text(rest)) if rest else []


@attrs.frozen
class Stats:
    """A finished answer's numbers, as Ollama's last object gives them (ns)."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def stats_of(
    began: float, now: float, turn: Turn | None, ready_at: float | None, usage: Usage
) -> Stats:
    """The numbers of an answer from the turn's timings (trio clock).

    ``load_duration``: waiting for a codex child and setting the thread and
    turn up; ``prompt_eval_duration``: from then to the first text or
    reasoning the model streamed; ``eval_duration``: from there to the end
    of the turn; counts: the turn's input and output tokens as codex
    reported them. ``total_duration``: the whole request.
    """
    total = _ns(now - began)
    if turn is None:
        return Stats(total_duration=total)
    end = min(now, turn.ended_at) if turn.ended_at is not None else now
    ready = ready_at if ready_at is not None else turn.started_at
    first = turn.first_output_at
    return Stats(
        total_duration=total,
        load_duration=_ns(turn.queue_wait_s + turn.setup_s),
        prompt_eval_count=usage.prompt_tokens,
        prompt_eval_duration=_ns((first if first is not None else end) - ready),
        eval_count=usage.completion_tokens,
        eval_duration=_ns(end - first) if first is not None else 0,
    )


def line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return orjson.dumps(obj) + b"\n"


def error_object(message: str) -> dict[str, Any]:
    """What ends a stream that failed (Ollama's own last line then)."""
    return {"error": message}


class OllamaEncoder:
    """Deltas → Ollama's chat or generate objects."""

    def __init__(self, api: Api, model: str) -> None:
        self.api = api
        self.model = model
        self._calls = 0  # function calls so far: each one's index

    def _object(
        self,
        created_at: str,
        content: str,
        thinking: str,
        *,
        done: bool,
        tool_calls: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": created_at}
        if self.api == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = list(tool_calls)
            obj["message"] = message
        else:
            obj["response"] = content
            if thinking:
                obj["thinking"] = thinking
        obj["done"] = done
        return obj

    def chunk(self, delta: ChatDelta, created_at: str) -> dict[str, Any] | None:
        """A streamed chunk of ``delta`` (None: it shows nothing here)."""
        if delta.call is not None:
            return self._object(created_at, "", "", done=False, tool_calls=[self.call(delta.call)])
        if not delta.content and not delta.reasoning:
            return None
        return self._object(created_at, delta.content, delta.reasoning, done=False)

    def call(self, call: ClientCall) -> dict[str, Any]:
        """The next entry of ``message.tool_calls``."""
        self._calls += 1
        return tool_call(call, self._calls - 1)

    def empty(self, created_at: str) -> dict[str, Any]:
        """A chunk with nothing in it: the stream's keepalive."""
        return self._object(created_at, "", "", done=False)

    def final(
        self,
        created_at: str,
        done_reason: str,
        stats: Stats,
        *,
        content: str = "",
        thinking: str = "",
        tool_calls: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """The last object: the whole answer (when not streamed), why it ended, its numbers."""
        obj = self._object(created_at, content, thinking, done=True, tool_calls=tool_calls)
        obj["done_reason"] = done_reason
        obj.update(attrs.asdict(stats))
        return obj


@attrs.define
class WholeAnswer:
    """The deltas of a turn, gathered for one JSON object."""

    content: list[str] = attrs.Factory(list)
    thinking: list[str] = attrs.Factory(list)
    tool_calls: list[dict[str, Any]] = attrs.Factory(list)

    def add(self, delta: ChatDelta) -> None:
        if delta.call is not None:
            self.tool_calls.append(tool_call(delta.call, len(self.tool_calls)))
        if delta.content:
            self.content.append(delta.content)
        if delta.reasoning:
            self.thinking.append(delta.reasoning)
