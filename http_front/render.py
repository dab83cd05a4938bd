"""Turn events → API-neutral pieces (:mod:`http_front.pieces`).

:class:`TurnRenderer` is fed every event of a turn and returns the pieces it
shows: answer text, reasoning, status lines and cards. Every front door
encodes the same pieces, streaming and whole, so the two forms can never
differ.

What each codex event, notification and item type becomes is decided in one
place: the tables ``_EVENT_HANDLERS``, ``_NOTIFICATIONS`` and ``ITEM_RENDERERS``
at the bottom of this module. Item types of the 0.169 schema that are not
rendered are listed in ``ITEM_RENDERERS`` too, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson

from bridge.protocol import (
    AgentMessageDelta,
    ClientToolCall,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TokenUsageUpdated,
    TurnErrorEvent,
    TurnStarted,
)
from supervisor import TurnEnded

from .blocks import unwrap_command
from .errors import turn_error
from .pieces import (
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
from .text_buffer import TextBuffer


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


@attrs.define
class _Running:
    """What is known of an item before it completes: a command's streamed
    output, and the approval policy that declined it."""

    output: TextBuffer = attrs.Factory(TextBuffer)
    declined_by: str | None = None


class _AgentText:
    """Agent text as shown: deltas as they come, a retried call's repeat held back.

    When codex loses the model stream and retries, it starts a new
    agentMessage item that repeats what was already streamed; the repeat is
    held back while it matches what the client has, and only what is new is
    shown.
    """

    def __init__(self) -> None:
        self._attempt = TextBuffer()  # agent text of the current model call
        self._replay: str | None = None  # text a retried call may repeat
        self._held = ""  # the new item's text held back while it repeats
        self._item: str | None = None

    def delta(self, item_id: str, delta: str) -> list[Piece]:
        new_item = item_id != self._item
        if new_item:
            self._item = item_id
            self._held = ""
        if self._replay is None:
            self._attempt.append(delta)
            return [Text(delta, new_paragraph=new_item)]
        candidate = self._held + delta
        if self._replay.startswith(candidate):
            self._held = candidate  # codex is repeating what was shown
            return []
        diverged = not candidate.startswith(self._replay)
        new = candidate if diverged else candidate[len(self._replay) :]
        self._replay = None
        self._held = ""
        self._attempt.append(candidate)
        return [Text(new, new_paragraph=diverged)] if new else []

    def whole(self, item_id: str, text: str) -> list[Piece]:
        """An agent message that arrived whole, without deltas."""
        if item_id == self._item or not text or self._replay is not None:
            return []
        self._item = item_id
        self._attempt.append(text)
        return [Text(text, new_paragraph=True)]

    def retrying(self) -> None:
        """codex will call the model again; its new answer may repeat this one."""
        shown = self._replay if self._replay is not None else self._attempt.text()
        self._replay = shown or None
        self._held = ""
        self._attempt.clear()

    def tool_ran(self) -> None:
        """Later text is a new answer, not a repeat."""
        self._attempt.clear()
        self._replay = None


class TurnRenderer:
    """Stateful rendering of one turn's events into pieces."""

    def __init__(self) -> None:
        self._agent = _AgentText()
        self._reasoning_key: tuple[str, int] | None = None
        self._reasoning_items: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._plan: tuple[tuple[str, str], ...] = ()
        #: Client function calls codex has begun (their items started) but
        #: not yet asked the client for: more calls of the same step coming.
        self.calls_awaited = 0
        #: Client function calls shown so far.
        self.calls_made = 0

    def feed(self, event: Any) -> list[Piece]:
        """The pieces ``event`` (a turn event or :class:`TurnEnded`) shows."""
        return _EVENT_HANDLERS[type(event)](self, event)

    @property
    def calls_in(self) -> bool:
        """Client function calls were made and none more is known to be
        coming (one may still be: see :func:`http_front.turns.calls_complete`)."""
        return self.calls_made > 0 and self.calls_awaited == 0

    def _running_item(self, item_id: str) -> _Running:
        running = self._running.get(item_id)
        if running is None:
            running = self._running[item_id] = _Running()
        return running

    def _card(self, card: Piece) -> list[Piece]:
        self._agent.tool_ran()
        return [card]

    # -- agent text and reasoning ------------------------------------------------------

    def _agent_delta(self, event: AgentMessageDelta) -> list[Piece]:
        return self._agent.delta(event.item_id, event.delta) if event.delta else []

    def _error(self, event: TurnErrorEvent) -> list[Piece]:
        if not event.will_retry:
            return []  # its message reaches the client with the outcome
        self._agent.retrying()
        return [Status(f"Connection to the model lost; retrying ({event.message})")]

    def _reasoning_delta(self, event: ReasoningDelta) -> list[Piece]:
        if not event.delta:
            return []
        self._reasoning_items.add(event.item_id)
        key = (event.item_id, event.index)
        new_part = self._reasoning_key is not None and key != self._reasoning_key
        self._reasoning_key = key
        return [Reasoning(event.delta, new_part)]

    # -- items -------------------------------------------------------------------------

    def _item_started(self, event: ItemStarted) -> list[Piece]:
        item = event.item
        kind = event.item_type
        if kind == "commandExecution":
            self._running_item(str(item.get("id")))
            return [Status(f"Running `{unwrap_command(_text(item.get('command')))}`")]
        if kind == "fileChange":
            paths = ", ".join(_text(c.get("path")) for c in item.get("changes") or [])
            return [Status(f"Editing files: {paths}")]
        if kind == "reasoning":
            return [Status("Thinking…")]
        if kind == "mcpToolCall":
            return [Status(f"Calling {item.get('server')}/{item.get('tool')}")]
        if kind == "dynamicToolCall":  # the client's function: shown as a call
            self.calls_awaited += 1
        if kind == "webSearch":
            return [Status(f"Searching the web: {_text(item.get('query'))}")]
        return []

    def _item_completed(self, event: ItemCompleted) -> list[Piece]:
        render = ITEM_RENDERERS.get(event.item_type)
        return render(self, event.item) if render is not None else []

    def _agent_item(self, item: dict[str, Any]) -> list[Piece]:
        return self._agent.whole(str(item.get("id")), _text(item.get("text")))

    def _reasoning_item(self, item: dict[str, Any]) -> list[Piece]:
        """A reasoning summary that arrived without deltas is shown whole."""
        summary = item.get("summary")
        if str(item.get("id")) in self._reasoning_items or not isinstance(summary, list):
            return []
        text = "\n\n".join(s for s in summary if isinstance(s, str))
        return self._reasoning_delta(ReasoningDelta("", str(item.get("id")), text))

    def _command(self, item: dict[str, Any]) -> list[Piece]:
        running = self._running.pop(str(item.get("id")), None) or _Running()
        output = item.get("aggregatedOutput")
        return self._card(
            CommandCard(
                command=_text(item.get("command")),
                status=_text(item.get("status")) or "completed",
                exit_code=_int(item.get("exitCode")),
                duration_ms=_int(item.get("durationMs")),
                output=output if isinstance(output, str) else running.output.text(),
                declined_by=running.declined_by,
            )
        )

    def _file_change(self, item: dict[str, Any]) -> list[Piece]:
        changes = []
        for change in item.get("changes") or []:
            kind = change.get("kind")
            kind_name = kind.get("type") if isinstance(kind, dict) else kind
            changes.append((_text(change.get("path")), _text(kind_name), _text(change.get("diff"))))
        running = self._running.pop(str(item.get("id")), None) or _Running()
        return self._card(
            FileChangeCard(
                tuple(changes), _text(item.get("status")) or "completed", running.declined_by
            )
        )

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
        return self._card(ToolCard(name, item.get("arguments") or {}, outcome, summary, outcome))

    def _dynamic_tool(self, item: dict[str, Any]) -> list[Piece]:
        """The client ran it and has its result: no card (the client's
        function calls are shown by the client itself)."""
        self._agent.tool_ran()
        return []

    def _client_call(self, event: ClientToolCall) -> list[Piece]:
        self._agent.tool_ran()
        self.calls_awaited = max(0, self.calls_awaited - 1)
        self.calls_made += 1
        arguments = event.arguments
        text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        return [ClientCall(event.call_id, event.tool, text)]

    def _web_search(self, item: dict[str, Any]) -> list[Piece]:
        query = _text(item.get("query"))
        action = item.get("action")
        if isinstance(action, dict) and action.get("type") == "openPage":
            summary = f"Opened {action.get('url')}"
        else:
            summary = f"Searched the web: {query}"
        result = item.get("results") or ""
        return self._card(ToolCard("web_search", {"query": query}, result, summary))

    def _plan_item(self, item: dict[str, Any]) -> list[Piece]:
        text = _text(item.get("text"))
        if not text:
            return []
        return self._card(ToolCard("plan", {}, "", "Proposed plan", text))

    def _image_view(self, item: dict[str, Any]) -> list[Piece]:
        path = _text(item.get("path"))
        return self._card(ToolCard("view_image", {"path": path}, "", f"Viewed image {path}"))

    def _image_generation(self, item: dict[str, Any]) -> list[Piece]:
        path = _text(item.get("savedPath"))
        failure = item.get("failure")
        summary = f"Image generation failed: {failure}" if failure else f"Generated image {path}"
        prompt = {"prompt": _text(item.get("revisedPrompt"))}
        return self._card(ToolCard("image_generation", prompt, path, summary))

    def _compaction(self, item: dict[str, Any]) -> list[Piece]:
        return [Status("Compacted the conversation's context")]

    # -- notifications -----------------------------------------------------------------

    def _other(self, event: OtherEvent) -> list[Piece]:
        handler = _NOTIFICATIONS.get(event.method)
        return handler(self, event.params) if handler is not None else []

    def _command_output(self, params: dict[str, Any]) -> list[Piece]:
        delta = _text(params.get("delta"))
        self._running_item(_text(params.get("itemId"))).output.append(delta)
        last = delta.rstrip("\n").rsplit("\n", 1)[-1].strip()
        return [Status(f"Running… {last[:120]}")] if last else []

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
        return self._card(PlanCard(steps, explanation if isinstance(explanation, str) else None))

    def _approval(self, params: dict[str, Any]) -> list[Piece]:
        """The bridge answered an approval request (see supervisor.child)."""
        decision = _text(params.get("decision"))
        item_id = _text(params.get("itemId"))
        if decision in ("decline", "cancel", "denied", "abort") and item_id:
            self._running_item(item_id).declined_by = _text(params.get("policy")) or decision
        what = unwrap_command(_text(params.get("command"))) or "a file change"
        return [Status(f"Approval for {what}: {decision} (policy)")]

    # -- usage and end -----------------------------------------------------------------

    def _nothing(self, event: TurnStarted | TokenUsageUpdated) -> list[Piece]:
        return []  # usage is counted by the turn itself (supervisor.Turn.usage)

    def _ended(self, event: TurnEnded) -> list[Piece]:
        error = turn_error(event.outcome)
        return [Status("Done" if error is None else error.message, done=True)]


_Render = Callable[[TurnRenderer, Any], list[Piece]]

#: Every event a turn delivers.
_EVENT_HANDLERS: dict[type[Any], _Render] = {
    AgentMessageDelta: TurnRenderer._agent_delta,
    ReasoningDelta: TurnRenderer._reasoning_delta,
    TokenUsageUpdated: TurnRenderer._nothing,
    TurnErrorEvent: TurnRenderer._error,
    TurnStarted: TurnRenderer._nothing,
    ItemStarted: TurnRenderer._item_started,
    ItemCompleted: TurnRenderer._item_completed,
    OtherEvent: TurnRenderer._other,
    ClientToolCall: TurnRenderer._client_call,
    TurnEnded: TurnRenderer._ended,
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
ITEM_RENDERERS: dict[str, _Render | None] = {
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
