"""Pieces → Responses API output items and stream events, streaming and whole.

One :class:`ResponsePresenter` per turn turns the API-neutral pieces
(:mod:`http_front.pieces`) into the stream's events — each a dict with its
``type`` — and keeps the output items they add up to; the stream encoder
(:class:`EventEncoder`) numbers and writes the events as SSE, and a whole
response is the presenter's final response object. Both forms come from the
same presenter, so they cannot differ.

How codex's activity appears (every call item of codex's own tools comes
already done, followed by its output where the type has one; only a
``function_call`` asks the client to run something):

==================  =====================================================
answer text         ``message`` items (one per codex agent message)
reasoning summary   ``reasoning`` items, one summary part per codex part
a command           ``shell_call`` + ``shell_call_output`` (stdout = the
                    command's output, the exit code as its outcome)
a file change       per file ``apply_patch_call`` (create/update/delete
                    with the diff) + ``apply_patch_call_output``
an MCP tool call    ``mcp_call`` (server label, tool, arguments, output)
a web search        ``web_search_call``
other codex tools   ``mcp_call`` with server label ``codex``
a plan              a ``reasoning`` item whose summary is the checklist
a client function   ``function_call`` (codex's call id, the name, the
                    arguments): the response ends with the step's calls
status lines        not shown (they are progress, not output)
==================  =====================================================
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs
import orjson

from ..blocks import unwrap_command
from ..errors import ApiError
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
from ..pieces import Usage as PieceUsage
from ..text_buffer import TextBuffer
from ..turns import Ending, FinishReason

Event = dict[str, Any]
Item = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_object(usage: PieceUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _json(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


@attrs.define
class _Open:
    """The item being streamed: a message or a reasoning item."""

    kind: str  # "message" | "reasoning"
    index: int
    item_id: str
    #: The reasoning item's summary parts.
    parts: list[str] = attrs.Factory(list)
    #: The message's text.
    text: TextBuffer = attrs.Factory(TextBuffer)


@attrs.frozen
class ResponseHead:
    """What a response object says besides its output."""

    response_id: str
    created_at: int
    model: str
    #: Request fields echoed back (see responses/request.py).
    echo: dict[str, Any]
    previous_response_id: str | None = None


class ResponsePresenter:
    """Stateful presentation of one turn's pieces as Responses events and items."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.output: list[Item] = []
        #: Events given out so far: whether the client has seen anything.
        self.shown = 0
        #: The client's function calls (their call ids) the answer ends with.
        self.calls: list[str] = []
        self._open: _Open | None = None
        self._final: dict[str, Any] | None = None

    # -- the response object -----------------------------------------------------------

    def response(
        self,
        status: str,
        *,
        usage: PieceUsage | None = None,
        error: ApiError | None = None,
        incomplete: str | None = None,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        head = self.head
        return {
            "id": head.response_id,
            "object": "response",
            "created_at": head.created_at,
            "status": status,
            "completed_at": completed_at,
            "error": None
            if error is None
            else {"code": error.code or "server_error", "message": error.message},
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "model": head.model,
            "output": list(self.output),
            "previous_response_id": head.previous_response_id,
            "usage": None if usage is None else usage_object(usage),
            **head.echo,
        }

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress``."""
        snapshot = self.response("in_progress")
        return [
            {"type": "response.created", "response": snapshot},
            {"type": "response.in_progress", "response": snapshot},
        ]

    def finish(self, end: Ending, completed_at: int) -> list[Event]:
        """The open item closed, and the one terminal event."""
        ok = end.error is None and end.finish_reason in (FinishReason.STOP, FinishReason.TOOL_CALLS)
        events = self._close("completed" if ok else "incomplete")
        if end.error is not None:
            final = self.response("failed", usage=end.usage, error=end.error)
            kind = "response.failed"
        elif end.finish_reason is FinishReason.LENGTH:
            final = self.response("incomplete", usage=end.usage, incomplete="max_output_tokens")
            kind = "response.incomplete"
        else:
            final = self.response("completed", usage=end.usage, completed_at=completed_at)
            kind = "response.completed"
        self._final = final
        events.append({"type": kind, "response": final})
        return events

    @property
    def final(self) -> dict[str, Any]:
        assert self._final is not None, "finish() first"
        return self._final

    def answer_text(self) -> str:
        """The answer's text: every message item's, in order."""
        return "".join(
            part["text"]
            for item in self.output
            if item["type"] == "message"
            for part in item["content"]
        )

    # -- pieces ------------------------------------------------------------------------

    def present(self, piece: Piece) -> list[Event]:
        opened = self._open
        if (
            type(piece) is Text
            and not piece.new_paragraph
            and opened is not None
            and opened.kind == "message"
        ):
            # The hot path: a delta of the open message's text.
            opened.text.append(piece.text)
            self.shown += 1
            return [self._text_event("response.output_text.delta", opened, delta=piece.text)]
        events = _PRESENTERS[type(piece)](self, piece)
        self.shown += len(events)
        return events

    def _text_event(self, kind: str, opened: _Open, **fields: Any) -> Event:
        return {
            "type": kind,
            "item_id": opened.item_id,
            "output_index": opened.index,
            "content_index": 0,
            "logprobs": [],
            **fields,
        }

    def _summary_event(self, kind: str, opened: _Open, **fields: Any) -> Event:
        return {
            "type": kind,
            "item_id": opened.item_id,
            "output_index": opened.index,
            "summary_index": len(opened.parts) - 1,
            **fields,
        }

    def _close(self, status: str = "completed") -> list[Event]:
        opened = self._open
        if opened is None:
            return []
        self._open = None
        if opened.kind == "message":
            text = opened.text.text()
            part = _text_part(text)
            item = {
                "id": opened.item_id,
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [part],
            }
            self.output.append(item)
            return [
                self._text_event("response.output_text.done", opened, text=text),
                {
                    "type": "response.content_part.done",
                    "item_id": opened.item_id,
                    "output_index": opened.index,
                    "content_index": 0,
                    "part": part,
                },
                {"type": "response.output_item.done", "output_index": opened.index, "item": item},
            ]
        events = self._close_summary_part(opened)
        item = {
            "id": opened.item_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text} for text in opened.parts],
        }
        self.output.append(item)
        events.append(
            {"type": "response.output_item.done", "output_index": opened.index, "item": item}
        )
        return events

    def _close_summary_part(self, opened: _Open) -> list[Event]:
        text = opened.parts[-1]
        return [
            self._summary_event("response.reasoning_summary_text.done", opened, text=text),
            self._summary_event(
                "response.reasoning_summary_part.done",
                opened,
                part={"type": "summary_text", "text": text},
            ),
        ]

    def _begin(self, kind: str, prefix: str, item: Item) -> tuple[_Open, list[Event]]:
        events = self._close()
        opened = self._open = _Open(kind, len(self.output), new_id(prefix))
        added = {**item, "id": opened.item_id}
        events.append(
            {"type": "response.output_item.added", "output_index": opened.index, "item": added}
        )
        return opened, events

    def _text(self, piece: Text) -> list[Event]:
        opened = self._open
        events: list[Event] = []
        if opened is None or opened.kind != "message" or piece.new_paragraph:
            empty = {"type": "message", "role": "assistant", "status": "in_progress", "content": []}
            opened, events = self._begin("message", "msg", empty)
            events.append(
                {
                    "type": "response.content_part.added",
                    "item_id": opened.item_id,
                    "output_index": opened.index,
                    "content_index": 0,
                    "part": _text_part(""),
                }
            )
        if piece.text:
            opened.text.append(piece.text)
            events.append(self._text_event("response.output_text.delta", opened, delta=piece.text))
        return events

    def _new_summary_part(self, opened: _Open) -> Event:
        opened.parts.append("")
        return self._summary_event(
            "response.reasoning_summary_part.added",
            opened,
            part={"type": "summary_text", "text": ""},
        )

    def _reasoning(self, piece: Reasoning) -> list[Event]:
        opened = self._open
        events: list[Event] = []
        if opened is None or opened.kind != "reasoning":
            opened, events = self._begin("reasoning", "rs", {"type": "reasoning", "summary": []})
            events.append(self._new_summary_part(opened))
        elif piece.new_part:
            events += self._close_summary_part(opened)
            events.append(self._new_summary_part(opened))
        opened.parts[-1] += piece.text
        events.append(
            self._summary_event("response.reasoning_summary_text.delta", opened, delta=piece.text)
        )
        return events

    def _status(self, piece: Status) -> list[Event]:
        return []  # progress, not output

    def _done_items(self, *items: Item) -> list[Event]:
        """Items that arrive complete: each added (in progress) and done."""
        events = self._close()
        for item in items:
            index = len(self.output)
            self.output.append(item)
            added = {**item, "status": "in_progress"} if "status" in item else item
            if item["type"] == "apply_patch_call_output":
                added = item  # its status is completed or failed only
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": added}
            )
            events.append(
                {"type": "response.output_item.done", "output_index": index, "item": item}
            )
        return events

    def _summary_item(self, text: str) -> list[Event]:
        """A whole text shown as a reasoning item of one summary part."""
        opened, events = self._begin("reasoning", "rs", {"type": "reasoning", "summary": []})
        events.append(self._new_summary_part(opened))
        opened.parts[-1] = text
        events.append(
            self._summary_event("response.reasoning_summary_text.delta", opened, delta=text)
        )
        return events + self._close()

    def _command(self, card: CommandCard) -> list[Event]:
        call_id = new_id("call")
        stderr = ""
        exit_code = card.exit_code
        if exit_code is None:
            exit_code = -1
            stderr = (
                f"not run: declined by the approval policy ({card.declined_by})"
                if card.declined_by
                else f"no exit code: codex reports the command {card.status}"
            )
        completed = card.status == "completed"
        call = {
            "id": new_id("sh"),
            "type": "shell_call",
            "call_id": call_id,
            "action": {
                "commands": [unwrap_command(card.command)],
                "timeout_ms": None,
                "max_output_length": None,
            },
            "status": "completed" if completed else "incomplete",
            "environment": None,
            "created_by": "codex",
        }
        output = {
            "id": new_id("sho"),
            "type": "shell_call_output",
            "call_id": call_id,
            "output": [
                {
                    "stdout": card.output,
                    "stderr": stderr,
                    "outcome": {"type": "exit", "exit_code": exit_code},
                }
            ],
            "status": "completed" if completed else "incomplete",
            "max_output_length": None,
            "created_by": "codex",
        }
        return self._done_items(call, output)

    def _file_change(self, card: FileChangeCard) -> list[Event]:
        items: list[Item] = []
        ok = card.status == "completed"
        for path, kind, diff in card.changes:
            call_id = new_id("call")
            operation: dict[str, Any]
            if kind == "add":
                operation = {"type": "create_file", "path": path, "diff": diff}
                done = f"Created {path}"
            elif kind == "delete":
                operation = {"type": "delete_file", "path": path}
                done = f"Deleted {path}"
            else:
                operation = {"type": "update_file", "path": path, "diff": diff}
                done = f"Updated {path}"
            if card.declined_by:
                done = f"not applied: declined by the approval policy ({card.declined_by})"
            elif not ok:
                done = f"not applied: codex reports the change {card.status}"
            items.append(
                {
                    "id": new_id("apc"),
                    "type": "apply_patch_call",
                    "call_id": call_id,
                    "operation": operation,
                    "status": "completed",
                    "created_by": "codex",
                }
            )
            items.append(
                {
                    "id": new_id("apco"),
                    "type": "apply_patch_call_output",
                    "call_id": call_id,
                    "status": "completed" if ok else "failed",
                    "output": done,
                    "created_by": "codex",
                }
            )
        return self._done_items(*items)

    def _tool(self, card: ToolCard) -> list[Event]:
        if card.name == "plan":
            return self._summary_item(card.body or card.summary)
        if card.name == "web_search":
            query = card.arguments.get("query") if isinstance(card.arguments, dict) else None
            item = {
                "id": new_id("ws"),
                "type": "web_search_call",
                "status": "completed",
                "action": {"type": "search", "query": query or card.summary},
            }
            return self._done_items(item)
        server, slash, tool = card.name.partition("/")
        if not slash:
            server, tool = "codex", card.name
        output = card.body or (_json(card.result) if card.result not in ("", None) else "")
        failed = card.summary.startswith("Failed") or " failed" in card.summary
        call: Item = {
            "id": new_id("mcp"),
            "type": "mcp_call",
            "server_label": server,
            "name": tool,
            "arguments": _json(card.arguments),
            "output": output or card.summary,
            "error": {"type": "mcp_tool_execution_error", "content": output or card.summary}
            if failed
            else None,
            "status": "failed" if failed else "completed",
        }
        return self._done_items(call)

    def _client_call(self, call: ClientCall) -> list[Event]:
        """A call of the client's function: its arguments streamed, done."""
        self.calls.append(call.call_id)
        events = self._close()
        index = len(self.output)
        item: Item = {
            "id": new_id("fc"),
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        self.output.append(item)
        added = {**item, "arguments": "", "status": "in_progress"}
        at = {"item_id": item["id"], "output_index": index}
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        if call.arguments:
            events.append(
                {"type": "response.function_call_arguments.delta", **at, "delta": call.arguments}
            )
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **at,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        return events

    def _plan(self, card: PlanCard) -> list[Event]:
        marks = {"completed": "[x]", "inProgress": "[~]", "in_progress": "[~]"}
        lines = [f"- {marks.get(status, '[ ]')} {step}" for step, status in card.steps]
        text = "Plan:\n" + "\n".join(lines)
        if card.explanation:
            text = f"{card.explanation}\n\n{text}"
        return self._summary_item(text)


_PRESENTERS: dict[type[Any], Callable[[ResponsePresenter, Any], list[Event]]] = {
    Text: ResponsePresenter._text,
    Reasoning: ResponsePresenter._reasoning,
    Status: ResponsePresenter._status,
    CommandCard: ResponsePresenter._command,
    FileChangeCard: ResponsePresenter._file_change,
    ToolCard: ResponsePresenter._tool,
    PlanCard: ResponsePresenter._plan,
    ClientCall: ResponsePresenter._client_call,
}


class EventEncoder:
    """Events → SSE frames (``event: <type>`` + ``data: {...}``), numbered in order."""

    def __init__(self) -> None:
        self.sequence = 0

    def encode(self, event: Event) -> bytes:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        kind: str = event["type"]
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def encode_all(self, events: list[Event]) -> bytes:
        return b"".join(self.encode(event) for event in events)
