"""Turn events → rendered pieces, for both response forms.

:class:`TurnRenderer` is fed every event of a turn and returns
:class:`Piece` values (answer text, reasoning text, a status line); the SSE
encoder (streaming) and :class:`Aggregate` (non-streaming) consume the same
pieces, so the two forms can never differ.

What each codex event and item type becomes is decided in one place: the
tables ``_EVENT_HANDLERS``, ``_NOTIFICATIONS`` and ``_ITEMS`` at the bottom of
this module. Item types of the 0.169 schema that are not rendered are listed
in ``_ITEMS`` too, with the reason.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from bridge.protocol import (
    AgentMessageDelta,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TokenCounts,
    TokenUsageUpdated,
    TurnCompleted,
    TurnErrorEvent,
    TurnEvent,
    TurnStarted,
    TurnStatus,
)
from supervisor.turn import FailureKind

from .blocks import command_block, file_change_block, plan_block, tool_block, unwrap_command


class ReasoningFormat(enum.StrEnum):
    """Where reasoning goes: ``delta.reasoning_content``, ``<think>`` in content, nowhere."""

    FIELD = "reasoning_content"
    THINK = "think"
    HIDDEN = "hidden"


@attrs.frozen
class RenderOptions:
    reasoning: ReasoningFormat = ReasoningFormat.FIELD
    status_events: bool = False
    command_output_lines: int = 20


@attrs.frozen
class Status:
    """An OpenWebUI status line: what the agent is doing now."""

    description: str
    done: bool = False


@attrs.frozen
class Piece:
    """Something to show: answer text, reasoning text, or a status line."""

    content: str = ""
    reasoning: str = ""
    status: Status | None = None


@attrs.frozen
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    @classmethod
    def of(cls, counts: TokenCounts) -> Usage:
        return cls(
            prompt_tokens=counts.input_tokens,
            completion_tokens=counts.output_tokens,
            total_tokens=counts.total_tokens,
            cached_tokens=counts.cached_input_tokens,
            reasoning_tokens=counts.reasoning_output_tokens,
        )


@attrs.frozen
class Failure:
    """Why a turn did not complete, in OpenAI error terms."""

    message: str
    type: str = "server_error"
    code: str | None = None
    status: int = 502


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class TurnRenderer:
    """Stateful rendering of one turn's events.

    Agent text: deltas are shown as they come. When codex loses the model
    stream and retries, it starts a new agentMessage item that repeats what
    was already streamed; the repeat is held back while it matches what the
    client has, and only what is new is shown. Separate agent messages, and
    blocks between them, are set apart by a blank line.
    """

    def __init__(self, options: RenderOptions | None = None) -> None:
        self.options = options or RenderOptions()
        self.completed: TurnCompleted | None = None
        self.last_error: TurnErrorEvent | None = None
        #: Pieces rendered so far: whether the client has seen anything.
        self.shown = 0
        self._content_parts: list[str] = []
        self._refusal: Failure | None = None
        # agent text
        self._content_tail = ""  # last characters of content, for separators
        self._attempt_text: list[str] = []  # agent text of the current model call
        self._replay: str | None = None  # text a retried call may repeat
        self._held = ""  # the new item's text held back while it repeats
        self._current_item: str | None = None
        # reasoning
        self._reasoning_key: tuple[str, int] | None = None
        self._reasoning_items: set[str] = set()
        self._in_think = False
        # commands and approvals
        self._output: dict[str, list[str]] = {}
        self._declined: dict[str, str] = {}
        self._plan: tuple[tuple[str, str], ...] = ()
        self._finish_reason = "stop"

    def feed(self, event: TurnEvent) -> list[Piece]:
        pieces = _EVENT_HANDLERS[type(event)](self, event)
        self.shown += len(pieces)
        self._content_parts.extend(p.content for p in pieces if p.content)
        return pieces

    def content(self) -> str:
        """All content rendered so far (what the client will send back as history)."""
        return "".join(self._content_parts)

    def refused(self, message: str, code: str, status: int) -> None:
        """The turn could not even start (e.g. on a retry after the stream began)."""
        self._refusal = Failure(message, "server_error", code, status)

    # -- building pieces ---------------------------------------------------------

    def _content(self, text: str) -> list[Piece]:
        """Answer text, closing an open <think> section first."""
        pieces: list[Piece] = []
        if self._in_think:
            self._in_think = False
            pieces.append(self._raw_content("\n</think>\n\n"))
        if text:
            pieces.append(self._raw_content(text))
        return pieces

    def _raw_content(self, text: str) -> Piece:
        self._content_tail = (self._content_tail + text)[-2:]
        return Piece(content=text)

    def _separator(self) -> str:
        """What puts the next paragraph or block on a line of its own."""
        if not self._content_tail or self._content_tail == "\n\n":
            return ""
        return "\n" if self._content_tail.endswith("\n") else "\n\n"

    def _block(self, markup: str) -> list[Piece]:
        self._attempt_text.clear()  # a tool ran: later text is a new answer
        self._replay = None
        return self._content(self._separator() + markup)

    def _status(self, description: str, done: bool = False) -> list[Piece]:
        if not self.options.status_events:
            return []
        return [Piece(status=Status(description, done))]

    # -- agent text ----------------------------------------------------------------

    def _agent_delta(self, event: AgentMessageDelta) -> list[Piece]:
        if not event.delta:
            return []
        prefix = ""
        if event.item_id != self._current_item:
            self._current_item = event.item_id
            self._held = ""
            if self._replay is None:
                prefix = self._separator()
        if self._replay is not None:
            candidate = self._held + event.delta
            if self._replay.startswith(candidate):
                self._held = candidate  # codex is repeating what we showed
                return []
            if candidate.startswith(self._replay):
                new = candidate[len(self._replay) :]
            else:  # the retry says something else: show it whole
                new = self._separator() + candidate
            self._replay = None
            self._held = ""
            self._attempt_text.append(candidate)
            return self._content(new)
        self._attempt_text.append(event.delta)
        return self._content(prefix + event.delta)

    def _agent_completed(self, item: dict[str, Any]) -> list[Piece]:
        """An agent message that arrived whole, without deltas, is shown now."""
        text = _text(item.get("text"))
        if item.get("id") == self._current_item or not text or self._replay is not None:
            return []
        self._current_item = str(item.get("id"))
        self._attempt_text.append(text)
        return self._content(self._separator() + text)

    def _error(self, event: TurnErrorEvent) -> list[Piece]:
        if not event.will_retry:
            self.last_error = event
            return []
        # codex will call the model again; its new answer may repeat this one
        shown = "".join(self._attempt_text)
        if self._replay is not None:
            shown = self._replay
        self._replay = shown or None
        self._held = ""
        self._attempt_text.clear()
        return self._status(f"Connection to the model lost; retrying ({event.message})")

    # -- reasoning -----------------------------------------------------------------

    def _reasoning_delta(self, event: ReasoningDelta) -> list[Piece]:
        if not event.delta or self.options.reasoning is ReasoningFormat.HIDDEN:
            return []
        self._reasoning_items.add(event.item_id)
        key = (event.item_id, event.index)
        gap = "\n\n" if self._reasoning_key is not None and key != self._reasoning_key else ""
        self._reasoning_key = key
        if self.options.reasoning is ReasoningFormat.FIELD:
            return [Piece(reasoning=gap + event.delta)]
        if not self._in_think:
            self._in_think = True
            self._content_tail = ""
            return [Piece(content=self._separator() + "<think>\n" + event.delta)]
        return [Piece(content=gap + event.delta)]

    def _reasoning_completed(self, item: dict[str, Any]) -> list[Piece]:
        """A reasoning summary that arrived without deltas is shown whole."""
        summary = item.get("summary")
        if str(item.get("id")) in self._reasoning_items or not isinstance(summary, list):
            return []
        text = "\n\n".join(s for s in summary if isinstance(s, str))
        if not text:
            return []
        event = ReasoningDelta("", str(item.get("id")), text)
        return self._reasoning_delta(event)

    # -- items ---------------------------------------------------------------------

    def _item_started(self, event: ItemStarted) -> list[Piece]:
        item = event.item
        kind = event.item_type
        if kind == "commandExecution":
            self._output[str(item.get("id"))] = []
            return self._status(f"Running `{unwrap_command(_text(item.get('command')))}`")
        if kind == "fileChange":
            paths = ", ".join(_text(c.get("path")) for c in item.get("changes") or [])
            return self._status(f"Editing files: {paths}")
        if kind == "reasoning":
            return self._status("Thinking…")
        if kind == "mcpToolCall":
            return self._status(f"Calling {item.get('server')}/{item.get('tool')}")
        if kind == "dynamicToolCall":
            return self._status(f"Calling {item.get('tool')}")
        if kind == "webSearch":
            return self._status(f"Searching the web: {_text(item.get('query'))}")
        return []

    def _item_completed(self, event: ItemCompleted) -> list[Piece]:
        render = _ITEMS.get(event.item_type)
        return render(self, event.item) if render is not None else []

    def _command(self, item: dict[str, Any]) -> list[Piece]:
        item_id = str(item.get("id"))
        streamed = "".join(self._output.pop(item_id, []))
        output = item.get("aggregatedOutput")
        exit_code = item.get("exitCode")
        duration = item.get("durationMs")
        markup = command_block(
            command=_text(item.get("command")),
            status=_text(item.get("status")) or "completed",
            exit_code=exit_code if isinstance(exit_code, int) else None,
            duration_ms=duration if isinstance(duration, int) else None,
            output=output if isinstance(output, str) else streamed,
            output_lines=self.options.command_output_lines,
            declined_by=self._declined.pop(item_id, None),
        )
        return self._block(markup)

    def _file_change(self, item: dict[str, Any]) -> list[Piece]:
        changes = []
        for change in item.get("changes") or []:
            kind = change.get("kind")
            kind_name = kind.get("type") if isinstance(kind, dict) else kind
            changes.append((_text(change.get("path")), _text(kind_name), _text(change.get("diff"))))
        markup = file_change_block(
            changes,
            _text(item.get("status")) or "completed",
            self._declined.pop(str(item.get("id")), None),
        )
        return self._block(markup)

    def _mcp_tool(self, item: dict[str, Any]) -> list[Piece]:
        name = f"{item.get('server')}/{item.get('tool')}"
        error = item.get("error")
        result = item.get("result")
        texts = []
        if isinstance(result, dict):
            for part in result.get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        outcome = f"error: {error.get('message')}" if isinstance(error, dict) else "\n".join(texts)
        summary = f"{'Failed' if error else 'Called'} MCP tool {name}"
        return self._block(
            tool_block(
                name=name,
                arguments=item.get("arguments") or {},
                result=outcome,
                summary=summary,
                body=outcome,
            )
        )

    def _dynamic_tool(self, item: dict[str, Any]) -> list[Piece]:
        name = _text(item.get("tool")) or "tool"
        ok = item.get("success")
        return self._block(
            tool_block(
                name=name,
                arguments=item.get("arguments") or {},
                result=item.get("contentItems") or [],
                summary=f"{'Called' if ok is not False else 'Failed'} {name}",
            )
        )

    def _web_search(self, item: dict[str, Any]) -> list[Piece]:
        query = _text(item.get("query"))
        action = item.get("action")
        if isinstance(action, dict) and action.get("type") == "openPage":
            summary = f"Opened {action.get('url')}"
        else:
            summary = f"Searched the web: {query}"
        return self._block(
            tool_block(
                name="web_search",
                arguments={"query": query},
                result=item.get("results") or "",
                summary=summary,
            )
        )

    def _plan_item(self, item: dict[str, Any]) -> list[Piece]:
        text = _text(item.get("text"))
        if not text:
            return []
        return self._block(
            tool_block(name="plan", arguments={}, result="", summary="Proposed plan", body=text)
        )

    def _image_view(self, item: dict[str, Any]) -> list[Piece]:
        path = _text(item.get("path"))
        return self._block(
            tool_block(
                name="view_image",
                arguments={"path": path},
                result="",
                summary=f"Viewed image {path}",
            )
        )

    def _image_generation(self, item: dict[str, Any]) -> list[Piece]:
        path = _text(item.get("savedPath"))
        failure = item.get("failure")
        summary = f"Image generation failed: {failure}" if failure else f"Generated image {path}"
        return self._block(
            tool_block(
                name="image_generation",
                arguments={"prompt": _text(item.get("revisedPrompt"))},
                result=path,
                summary=summary,
            )
        )

    def _compaction(self, item: dict[str, Any]) -> list[Piece]:
        return self._status("Compacted the conversation's context")

    def _agent_item(self, item: dict[str, Any]) -> list[Piece]:
        return self._agent_completed(item)

    def _reasoning_item(self, item: dict[str, Any]) -> list[Piece]:
        return self._reasoning_completed(item)

    # -- notifications ---------------------------------------------------------------

    def _other(self, event: OtherEvent) -> list[Piece]:
        handler = _NOTIFICATIONS.get(event.method)
        return handler(self, event.params) if handler is not None else []

    def _command_output(self, params: dict[str, Any]) -> list[Piece]:
        chunks = self._output.setdefault(_text(params.get("itemId")), [])
        delta = _text(params.get("delta"))
        chunks.append(delta)
        last = delta.rstrip("\n").rsplit("\n", 1)[-1].strip()
        return self._status(f"Running… {last[:120]}") if last else []

    def _plan_updated(self, params: dict[str, Any]) -> list[Piece]:
        steps = tuple(
            (_text(s.get("step")), _text(s.get("status")))
            for s in params.get("plan") or []
            if isinstance(s, dict)
        )
        if not steps or steps == self._plan:
            return []
        self._plan = steps
        explanation = params.get("explanation")
        return self._block(plan_block(steps, explanation if isinstance(explanation, str) else None))

    def _approval(self, params: dict[str, Any]) -> list[Piece]:
        """The bridge answered an approval request (see supervisor.child)."""
        decision = _text(params.get("decision"))
        item_id = _text(params.get("itemId"))
        if decision in ("decline", "cancel", "denied", "abort") and item_id:
            self._declined[item_id] = _text(params.get("policy")) or decision
        what = unwrap_command(_text(params.get("command"))) or "a file change"
        return self._status(f"Approval for {what}: {decision} (policy)")

    # -- usage and end ---------------------------------------------------------------

    def _usage(self, event: TokenUsageUpdated) -> list[Piece]:
        return []  # counted by the turn itself (supervisor.turn.Turn.usage)

    def _completed(self, event: TurnCompleted) -> list[Piece]:
        self.completed = event
        pieces = self._content("")  # close an open <think>
        if self._is_length_limit():
            self._finish_reason = "length"
        failure = self.failure()
        if failure is None or self._finish_reason == "length":
            return pieces + self._status("Done", done=True)
        return pieces + self._status(failure.message, done=True)

    def _started(self, event: TurnStarted) -> list[Piece]:
        return []

    def _is_length_limit(self) -> bool:
        done = self.completed
        message = (done.error_message if done else None) or (
            self.last_error.message if self.last_error else ""
        )
        return (
            done is not None
            and done.status is TurnStatus.FAILED
            and "max_output_tokens" in (message or "")
        )

    # -- results ---------------------------------------------------------------

    def finish_reason(self) -> str:
        """``stop``, ``length`` (the model's output limit), or ``error`` for a
        turn that failed, was interrupted or could not run."""
        if self._finish_reason == "stop" and self.failure() is not None:
            return "error"
        return self._finish_reason

    def failure(self) -> Failure | None:
        """None for a completed turn (or one cut at the length limit), else what went wrong."""
        if self._refusal is not None:
            return self._refusal
        done = self.completed
        if done is not None and done.status is TurnStatus.COMPLETED:
            return None
        if done is None:
            return Failure("the turn ended without a result")
        if self._is_length_limit():
            return None
        if done.status is TurnStatus.INTERRUPTED:
            return Failure("the turn was interrupted", code="turn_interrupted")
        message = done.error_message or (
            self.last_error.message if self.last_error else "the turn failed"
        )
        info = done.codex_error_info
        if info is None and self.last_error is not None:
            info = self.last_error.codex_error_info
        return classify_failure(message, info)


_Render = Callable[[TurnRenderer, Any], list[Piece]]

#: Every turn event type.
_EVENT_HANDLERS: dict[type[Any], _Render] = {
    AgentMessageDelta: TurnRenderer._agent_delta,
    ReasoningDelta: TurnRenderer._reasoning_delta,
    TokenUsageUpdated: TurnRenderer._usage,
    TurnErrorEvent: TurnRenderer._error,
    TurnCompleted: TurnRenderer._completed,
    TurnStarted: TurnRenderer._started,
    ItemStarted: TurnRenderer._item_started,
    ItemCompleted: TurnRenderer._item_completed,
    OtherEvent: TurnRenderer._other,
}

#: Notifications other than the parsed events. Not listed, deliberately
#: ignored: turn/diff/updated (the fileChange items carry the same diffs),
#: item/fileChange/outputDelta and item/fileChange/patchUpdated (progress of
#: a patch shown whole when complete), item/plan/delta (the plan item is
#: shown whole), item/reasoning/summaryPartAdded (parts are told apart by
#: their index), item/commandExecution/terminalInteraction, warning,
#: model/rerouted, thread/settings/updated, hook/*, deprecationNotice.
_NOTIFICATIONS: dict[str, _Render] = {
    "item/commandExecution/outputDelta": TurnRenderer._command_output,
    "turn/plan/updated": TurnRenderer._plan_updated,
    "bridge/approval": TurnRenderer._approval,
}

#: Every ThreadItem type of codex 0.169, rendered when it completes.
_ITEMS: dict[str, _Render | None] = {
    "agentMessage": TurnRenderer._agent_item,
    "reasoning": TurnRenderer._reasoning_item,
    "commandExecution": TurnRenderer._command,
    "fileChange": TurnRenderer._file_change,
    "mcpToolCall": TurnRenderer._mcp_tool,
    "dynamicToolCall": TurnRenderer._dynamic_tool,
    "webSearch": TurnRenderer._web_search,
    "plan": TurnRenderer._plan_item,
    "imageView": TurnRenderer._image_view,
    "imageGeneration": TurnRenderer._image_generation,
    "contextCompaction": TurnRenderer._compaction,
    # Deliberately not rendered:
    "userMessage": None,  # the client's own message
    "hookPrompt": None,  # configuration hooks talking to the model
    "functionCallOutput": None,  # tool results already shown by their item
    "collabAgentToolCall": None,  # sub-agent plumbing; their work shows as items
    "subAgentActivity": None,
    "sleep": None,
    "enteredReviewMode": None,  # review mode is not started by the bridge
    "exitedReviewMode": None,
}


def classify_failure(message: str, info: Any) -> Failure:
    """Map codex's error info to an OpenAI-style error."""
    key = (
        info
        if isinstance(info, str)
        else next(iter(info), None)
        if isinstance(info, dict)
        else None
    )
    if key == "usageLimitExceeded":
        return Failure(message, "insufficient_quota", "insufficient_quota", 429)
    http_status = (info.get(key) or {}).get("httpStatusCode") if isinstance(info, dict) else None
    if http_status == 429:
        return Failure(message, "rate_limit_error", "rate_limit_exceeded", 429)
    if http_status in (401, 403) or key == "unauthorized":
        # The model provider refused codex's credentials: an operator's problem.
        return Failure(message, "authentication_error", "model_auth_failed", 502)
    if key == "contextWindowExceeded":
        return Failure(message, "invalid_request_error", "context_length_exceeded", 400)
    if key == "unauthorized":
        return Failure(message, "authentication_error", "codex_not_authenticated", 503)
    if key in (FailureKind.IDLE_TIMEOUT, FailureKind.TURN_TIMEOUT):
        return Failure(message, "server_error", "timeout", 504)
    if key == FailureKind.RETRY_TIMEOUT:
        return Failure(message, "server_error", "model_unreachable", 502)
    if key == FailureKind.CHILD_EXITED:
        return Failure(message, "server_error", "codex_exited", 502)
    if key == FailureKind.SHUTDOWN:
        return Failure(message, "server_error", "service_shutting_down", 503)
    if key == FailureKind.CONSUMER_TOO_SLOW:
        return Failure(message, "server_error", "client_too_slow", 502)
    return Failure(message, "server_error", "codex_turn_failed", 502)


class Aggregate:
    """Collects pieces for a non-streaming response."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []

    def add(self, piece: Piece) -> None:
        if piece.content:
            self._content.append(piece.content)
        if piece.reasoning:
            self._reasoning.append(piece.reasoning)

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)
