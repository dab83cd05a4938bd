"""Pieces → what a chat completion's message shows.

Chat completions have two fields for a turn: ``content`` and
``reasoning_content`` (plus OpenWebUI's status events beside them). The
presenter decides what of each piece goes where — paragraphs set apart,
reasoning as its own field or in ``<think>``, cards as OpenWebUI
``<details>`` markup (:mod:`http_front.blocks`) — and both encoders (the
chunk stream and the whole ``chat.completion``) take its :class:`ChatDelta`
values, so they cannot differ.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from ..blocks import command_block, file_change_block, plan_block, tool_block
from ..pieces import (
    ClientCall,
    CommandCard,
    FileChangeCard,
    Piece,
    PlanCard,
    Reasoning,
    Status,
    Text,
    ToolCard,
)
from ..text_buffer import TextBuffer


class ReasoningFormat(enum.StrEnum):
    """Where reasoning goes: ``delta.reasoning_content``, ``<think>`` in content, nowhere."""

    FIELD = "reasoning_content"
    THINK = "think"
    HIDDEN = "hidden"


@attrs.frozen
class ChatOptions:
    reasoning: ReasoningFormat = ReasoningFormat.FIELD
    #: OpenWebUI status events (live streams only).
    status_events: bool = False
    command_output_lines: int = 20


@attrs.frozen(slots=True)
class ChatDelta:
    """One change to the message: text for ``content``, for
    ``reasoning_content``, or a status line."""

    content: str = ""
    reasoning: str = ""
    status: Status | None = None
    #: The model calls a function of the client's.
    call: ClientCall | None = None


class ChatPresenter:
    """Stateful presentation of one turn's pieces as chat deltas."""

    def __init__(self, options: ChatOptions | None = None) -> None:
        self.options = options or ChatOptions()
        #: Deltas given out so far: whether the client has seen anything.
        self.shown = 0
        self._content_parts = TextBuffer()
        self._tail = ""  # last characters of content, for separators
        self._in_think = False
        #: The client's function calls the answer ends with.
        self.calls: list[ClientCall] = []

    def present(self, piece: Piece) -> list[ChatDelta]:
        if type(piece) is Text and piece.text and not piece.new_paragraph and not self._in_think:
            # The hot path: a delta of the answer's text.
            text = piece.text
            self._tail = (self._tail + text)[-2:]
            self._content_parts.append(text)
            self.shown += 1
            return [ChatDelta(content=text)]
        deltas = _PRESENTERS[type(piece)](self, piece)
        self.shown += len(deltas)
        for delta in deltas:
            if delta.content:
                self._content_parts.append(delta.content)
        return deltas

    def content(self) -> str:
        """All content given out so far (what the client will send back as history)."""
        return self._content_parts.text()

    def _content(self, text: str) -> list[ChatDelta]:
        """Content, closing an open ``<think>`` section first."""
        deltas: list[ChatDelta] = []
        if self._in_think:
            self._in_think = False
            deltas.append(self._raw("\n</think>\n\n"))
        if text:
            deltas.append(self._raw(text))
        return deltas

    def _raw(self, text: str) -> ChatDelta:
        self._tail = (self._tail + text)[-2:]
        return ChatDelta(content=text)

    def _separator(self) -> str:
        """What puts the next paragraph or block on a line of its own."""
        if not self._tail or self._tail == "\n\n":
            return ""
        return "\n" if self._tail.endswith("\n") else "\n\n"

    def _text(self, piece: Text) -> list[ChatDelta]:
        if piece.new_paragraph:
            return self._content(self._separator() + piece.text)
        return self._content(piece.text)

    def _reasoning(self, piece: Reasoning) -> list[ChatDelta]:
        reasoning = self.options.reasoning
        gap = "\n\n" if piece.new_part else ""
        if reasoning is ReasoningFormat.FIELD:
            return [ChatDelta(reasoning=gap + piece.text)]
        if reasoning is ReasoningFormat.HIDDEN:
            return []
        if not self._in_think:
            self._in_think = True
            self._tail = ""
            return [ChatDelta(content="<think>\n" + piece.text)]
        return [ChatDelta(content=gap + piece.text)]

    def _status(self, piece: Status) -> list[ChatDelta]:
        closing = self._content("") if piece.done else []  # the end: close <think>
        if self.options.status_events:
            return [*closing, ChatDelta(status=piece)]
        return closing

    def _card(self, markup: str) -> list[ChatDelta]:
        return self._content(self._separator() + markup)

    def _command(self, card: CommandCard) -> list[ChatDelta]:
        lines = self.options.command_output_lines
        return self._card(command_block(**attrs.asdict(card, recurse=False), output_lines=lines))

    def _file_change(self, card: FileChangeCard) -> list[ChatDelta]:
        return self._card(file_change_block(card.changes, card.status, card.declined_by))

    def _tool(self, card: ToolCard) -> list[ChatDelta]:
        return self._card(tool_block(**attrs.asdict(card, recurse=False)))

    def _plan(self, card: PlanCard) -> list[ChatDelta]:
        return self._card(plan_block(card.steps, card.explanation))


def _call(presenter: ChatPresenter, call: ClientCall) -> list[ChatDelta]:
    presenter.calls.append(call)
    return [ChatDelta(call=call)]


_PRESENTERS: dict[type[Any], Callable[[ChatPresenter, Any], list[ChatDelta]]] = {
    ClientCall: _call,
    Text: ChatPresenter._text,
    Reasoning: ChatPresenter._reasoning,
    Status: ChatPresenter._status,
    CommandCard: ChatPresenter._command,
    FileChangeCard: ChatPresenter._file_change,
    ToolCard: ChatPresenter._tool,
    PlanCard: ChatPresenter._plan,
}
