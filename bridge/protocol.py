"""Typed codex app-server 0.169 protocol: request params, results, turn events.

Only the fields the bridge uses are modelled; codex adds fields freely and the
converter ignores unknown keys. Names are snake_case here and camelCase on
the wire; the converter renames both ways.

Turn events are parsed from notifications by :func:`parse_turn_event`, a
table keyed by method. Methods not in the table become :class:`OtherEvent`
so nothing a child says is silently lost on the way to the renderer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .messages import CONVERTER, JsonObject, Notification, structure


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _register_camel_case() -> None:
    def structure_factory(cls: type[Any]) -> Any:
        renames = {
            a.name: override(rename=_camel(a.name))
            for a in attrs.fields(cls)
            if _camel(a.name) != a.name
        }
        return make_dict_structure_fn(cls, CONVERTER, **renames)  # type: ignore[arg-type]

    def unstructure_factory(cls: type[Any]) -> Any:
        renames = {
            # Optional params left at None are not sent at all.
            a.name: override(rename=_camel(a.name), omit_if_default=a.default is None)
            for a in attrs.fields(cls)
        }
        return make_dict_unstructure_fn(cls, CONVERTER, **renames)  # type: ignore[arg-type]

    def is_protocol_class(cls: Any) -> bool:
        return attrs.has(cls) and getattr(cls, "__module__", "") == __name__

    CONVERTER.register_structure_hook_factory(is_protocol_class, structure_factory)
    CONVERTER.register_unstructure_hook_factory(is_protocol_class, unstructure_factory)


def to_wire(params: Any) -> JsonObject:
    """Unstructure protocol params, dropping fields left at their default."""
    result: JsonObject = CONVERTER.unstructure(params)
    return result


# -- handshake -------------------------------------------------------------


@attrs.frozen
class ClientInfo:
    name: str
    version: str
    title: str | None = None


@attrs.frozen
class InitializeParams:
    client_info: ClientInfo
    capabilities: JsonObject | None = None


@attrs.frozen
class InitializeResult:
    user_agent: str
    codex_home: str | None = None
    platform_os: str | None = None


@attrs.frozen
class AccountReadResult:
    account: JsonObject | None = None
    requires_openai_auth: bool = False


# -- models ----------------------------------------------------------------


@attrs.frozen
class ReasoningEffortOption:
    reasoning_effort: str
    description: str = ""


@attrs.frozen
class ModelInfo:
    id: str
    model: str
    display_name: str = ""
    description: str = ""
    hidden: bool = False
    is_default: bool = False
    default_reasoning_effort: str | None = None
    supported_reasoning_efforts: list[ReasoningEffortOption] = attrs.Factory(list)


@attrs.frozen
class ModelListResult:
    data: list[ModelInfo]
    next_cursor: str | None = None


# -- threads and turns ------------------------------------------------------


class SandboxMode(enum.StrEnum):
    READ_ONLY = "read-only"
    WORKSPACE_WRITE = "workspace-write"
    DANGER_FULL_ACCESS = "danger-full-access"


@attrs.frozen
class ThreadStartParams:
    model: str | None = None
    cwd: str | None = None
    approval_policy: str | None = None
    sandbox: str | None = None
    base_instructions: str | None = None
    developer_instructions: str | None = None
    ephemeral: bool | None = None
    #: The client's functions the model may call (``item/tool/call``); fixed
    #: for the thread's life.
    dynamic_tools: list[JsonObject] | None = None


@attrs.frozen
class ThreadInfo:
    id: str
    model_provider: str | None = None
    path: str | None = None
    cwd: str | None = None


@attrs.frozen
class ThreadStartResult:
    thread: ThreadInfo
    model: str
    model_provider: str | None = None
    reasoning_effort: str | None = None


@attrs.frozen
class ThreadResumeParams:
    thread_id: str
    exclude_turns: bool | None = None


@attrs.frozen
class ThreadRevertParams:
    thread_id: str
    #: This turn and every later one leave the thread's history.
    before_turn_id: str


@attrs.frozen
class InjectItemsParams:
    thread_id: str
    items: list[JsonObject]


@attrs.frozen
class TextInput:
    text: str
    type: str = "text"


@attrs.frozen
class LocalImageInput:
    """An image file on disk; the model sees it as an ``input_image``."""

    path: str
    type: str = "localImage"


@attrs.frozen
class ImageUrlInput:
    """An image by URL (``https:`` or ``data:``); codex passes it on as is."""

    url: str
    type: str = "image"


UserInput = TextInput | LocalImageInput | ImageUrlInput


@attrs.frozen
class TurnStartParams:
    thread_id: str
    input: list[UserInput]
    model: str | None = None
    effort: str | None = None
    summary: str | None = None
    cwd: str | None = None
    #: A JSON Schema the turn's final message must follow (this turn only).
    output_schema: JsonObject | None = None
    #: ``untrusted`` / ``on-request`` / ``never``: sticky on the thread.
    approval_policy: str | None = None
    #: A named permissions profile: sticky on the thread.
    permissions: str | None = None


@attrs.frozen
class TurnInfo:
    id: str
    status: str = "inProgress"
    error: JsonObject | None = None


@attrs.frozen
class TurnStartResult:
    turn: TurnInfo


@attrs.frozen
class TurnInterruptParams:
    thread_id: str
    turn_id: str


_register_camel_case()


# -- turn events ------------------------------------------------------------


class TurnStatus(enum.StrEnum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@attrs.frozen
class TokenCounts:
    total_tokens: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0


@attrs.frozen
class TurnStarted:
    turn_id: str


@attrs.frozen
class ItemStarted:
    turn_id: str
    item: JsonObject

    @property
    def item_type(self) -> str:
        return str(self.item.get("type", ""))


@attrs.frozen
class ItemCompleted:
    turn_id: str
    item: JsonObject

    @property
    def item_type(self) -> str:
        return str(self.item.get("type", ""))


@attrs.frozen
class AgentMessageDelta:
    turn_id: str
    item_id: str
    delta: str


@attrs.frozen
class ReasoningDelta:
    """A reasoning summary delta (``raw`` False) or raw reasoning text."""

    turn_id: str
    item_id: str
    delta: str
    index: int = 0
    raw: bool = False


@attrs.frozen
class TokenUsageUpdated:
    turn_id: str
    total: TokenCounts
    last: TokenCounts
    model_context_window: int | None = None


@attrs.frozen
class TurnErrorEvent:
    """An ``error`` notification: progress when ``will_retry``, else final."""

    turn_id: str | None
    message: str
    will_retry: bool
    codex_error_info: Any = None
    additional_details: str | None = None


@attrs.frozen
class TurnCompleted:
    turn_id: str
    status: TurnStatus
    error_message: str | None = None
    codex_error_info: Any = None


@attrs.frozen
class ClientToolCall:
    """The model calls one of the client's functions (a dynamic tool): codex
    waits for its result (``item/tool/call``, answered through the client)."""

    turn_id: str
    call_id: str
    tool: str
    arguments: Any


@attrs.frozen
class OtherEvent:
    method: str
    params: JsonObject


TurnEvent: TypeAlias = (
    TurnStarted
    | ItemStarted
    | ItemCompleted
    | AgentMessageDelta
    | ReasoningDelta
    | TokenUsageUpdated
    | TurnErrorEvent
    | TurnCompleted
    | ClientToolCall
    | OtherEvent
)


def _str(params: JsonObject, key: str) -> str:
    value = params.get(key)
    return value if isinstance(value, str) else ""


def _counts(data: Any) -> TokenCounts:
    return structure(data, TokenCounts) if isinstance(data, dict) else TokenCounts()


def _agent_delta(p: JsonObject) -> TurnEvent:
    return AgentMessageDelta(_str(p, "turnId"), _str(p, "itemId"), _str(p, "delta"))


def _summary_delta(p: JsonObject) -> TurnEvent:
    index = p.get("summaryIndex")
    return ReasoningDelta(
        _str(p, "turnId"),
        _str(p, "itemId"),
        _str(p, "delta"),
        index if isinstance(index, int) else 0,
    )


def _raw_reasoning_delta(p: JsonObject) -> TurnEvent:
    index = p.get("contentIndex")
    return ReasoningDelta(
        _str(p, "turnId"),
        _str(p, "itemId"),
        _str(p, "delta"),
        index if isinstance(index, int) else 0,
        raw=True,
    )


def _item(cls: type[ItemStarted] | type[ItemCompleted]) -> Callable[[JsonObject], TurnEvent]:
    def parse(p: JsonObject) -> TurnEvent:
        item = p.get("item")
        return cls(_str(p, "turnId"), item if isinstance(item, dict) else {})

    return parse


def _turn_started(p: JsonObject) -> TurnEvent:
    turn = p.get("turn")
    turn_id = turn.get("id") if isinstance(turn, dict) else None
    return TurnStarted(turn_id if isinstance(turn_id, str) else _str(p, "turnId"))


def _usage(p: JsonObject) -> TurnEvent:
    usage = p.get("tokenUsage")
    usage = usage if isinstance(usage, dict) else {}
    window = usage.get("modelContextWindow")
    return TokenUsageUpdated(
        _str(p, "turnId"),
        _counts(usage.get("total")),
        _counts(usage.get("last")),
        window if isinstance(window, int) else None,
    )


def _error(p: JsonObject) -> TurnEvent:
    error = p.get("error")
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    details = error.get("additionalDetails")
    turn_id = p.get("turnId")
    return TurnErrorEvent(
        turn_id if isinstance(turn_id, str) else None,
        message if isinstance(message, str) else "codex reported an error",
        bool(p.get("willRetry")),
        error.get("codexErrorInfo"),
        details if isinstance(details, str) else None,
    )


def _turn_completed(p: JsonObject) -> TurnEvent:
    turn = p.get("turn")
    turn = turn if isinstance(turn, dict) else {}
    try:
        status = TurnStatus(str(turn.get("status")))
    except ValueError:
        status = TurnStatus.FAILED
    error = turn.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    info = error.get("codexErrorInfo") if isinstance(error, dict) else None
    turn_id = turn.get("id")
    return TurnCompleted(
        turn_id if isinstance(turn_id, str) else "",
        status,
        message if isinstance(message, str) else None,
        info,
    )


def _client_tool_call(p: JsonObject) -> TurnEvent:
    return ClientToolCall(_str(p, "turnId"), _str(p, "callId"), _str(p, "tool"), p.get("arguments"))


#: What codex's ``item/tool/call`` server request is delivered to the thread as.
CLIENT_TOOL_CALL = "item/tool/call"

TURN_EVENT_PARSERS: dict[str, Callable[[JsonObject], TurnEvent]] = {
    CLIENT_TOOL_CALL: _client_tool_call,
    "item/agentMessage/delta": _agent_delta,
    "item/reasoning/summaryTextDelta": _summary_delta,
    "item/reasoning/textDelta": _raw_reasoning_delta,
    "item/started": _item(ItemStarted),
    "item/completed": _item(ItemCompleted),
    "turn/started": _turn_started,
    "thread/tokenUsage/updated": _usage,
    "error": _error,
    "turn/completed": _turn_completed,
}


def parse_turn_event(notification: Notification) -> TurnEvent:
    parser = TURN_EVENT_PARSERS.get(notification.method)
    if parser is None:
        return OtherEvent(notification.method, notification.params)
    return parser(notification.params)


# -- account -----------------------------------------------------------------


@attrs.frozen
class RateLimitWindow:
    """One window of the account's rate limit, as codex last reported it."""

    name: str  # "primary" or "secondary"
    used_percent: float
    window_minutes: int | None = None
    resets_at: int | None = None  # unix seconds


def parse_rate_limits(params: JsonObject) -> tuple[RateLimitWindow, ...]:
    """The windows of ``account/rateLimits/updated`` (or the snapshot that
    ``account/rateLimits/read`` answers); none when codex knows none — a
    provider without rate-limit headers reports every window as null."""
    snapshot = params.get("rateLimits")
    if not isinstance(snapshot, dict):
        return ()
    windows: list[RateLimitWindow] = []
    for name in ("primary", "secondary"):
        window = snapshot.get(name)
        if not isinstance(window, dict):
            continue
        used = window.get("usedPercent")
        if isinstance(used, bool) or not isinstance(used, int | float):
            continue
        minutes = window.get("windowDurationMins")
        resets = window.get("resetsAt")
        windows.append(
            RateLimitWindow(
                name,
                float(used),
                minutes if isinstance(minutes, int) and not isinstance(minutes, bool) else None,
                resets if isinstance(resets, int) and not isinstance(resets, bool) else None,
            )
        )
    return tuple(windows)
