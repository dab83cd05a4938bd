"""Turn events → rendered pieces (content / reasoning), for both response forms.

:class:`TurnRenderer` is fed every event of a turn and returns
:class:`Piece` values; the SSE encoder (streaming) and :class:`Aggregate`
(non-streaming) both consume the same pieces, so the two forms can never
differ. Which event is rendered how lives in one table,
``TurnRenderer._handlers``.
"""

from __future__ import annotations

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


@attrs.frozen
class Piece:
    """Something to show: answer text or reasoning text."""

    content: str = ""
    reasoning: str = ""


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


ZERO_USAGE = Usage(0, 0, 0, 0, 0)


def _minus(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(
        a.total_tokens - b.total_tokens,
        a.input_tokens - b.input_tokens,
        a.cached_input_tokens - b.cached_input_tokens,
        a.output_tokens - b.output_tokens,
        a.reasoning_output_tokens - b.reasoning_output_tokens,
    )


@attrs.frozen
class Failure:
    """Why a turn did not complete, in OpenAI error terms."""

    message: str
    type: str = "server_error"
    code: str | None = None
    status: int = 502


_NO_PIECES: tuple[Piece, ...] = ()


class TurnRenderer:
    """Stateful rendering of one turn's events."""

    def __init__(self) -> None:
        self._baseline: TokenCounts | None = None
        self._total: TokenCounts | None = None
        self.completed: TurnCompleted | None = None
        self.last_error: TurnErrorEvent | None = None
        #: Pieces rendered so far: whether the client has seen anything.
        self.shown = 0
        self._refusal: Failure | None = None
        self._handlers: dict[type[Any], Callable[[Any], tuple[Piece, ...]]] = {
            AgentMessageDelta: self._agent_delta,
            ReasoningDelta: self._reasoning_delta,
            TokenUsageUpdated: self._usage,
            TurnErrorEvent: self._error,
            TurnCompleted: self._completed,
            # Deliberately not rendered (yet): item lifecycle and other
            # notifications carry nothing beyond what the deltas showed.
            TurnStarted: self._nothing,
            ItemStarted: self._nothing,
            ItemCompleted: self._nothing,
            OtherEvent: self._nothing,
        }

    def feed(self, event: TurnEvent) -> tuple[Piece, ...]:
        pieces = self._handlers[type(event)](event)
        self.shown += len(pieces)
        return pieces

    def refused(self, message: str, code: str, status: int) -> None:
        """The turn could not even start (e.g. on a retry after the stream began)."""
        self._refusal = Failure(message, "server_error", code, status)

    @staticmethod
    def _nothing(event: Any) -> tuple[Piece, ...]:
        return _NO_PIECES

    @staticmethod
    def _agent_delta(event: AgentMessageDelta) -> tuple[Piece, ...]:
        return (Piece(content=event.delta),) if event.delta else _NO_PIECES

    @staticmethod
    def _reasoning_delta(event: ReasoningDelta) -> tuple[Piece, ...]:
        return (Piece(reasoning=event.delta),) if event.delta else _NO_PIECES

    def _usage(self, event: TokenUsageUpdated) -> tuple[Piece, ...]:
        if self._baseline is None:
            # ``total`` accumulates over the thread; what it held before this
            # turn's first model call is that call's total minus its own share.
            self._baseline = _minus(event.total, event.last)
        self._total = event.total
        return _NO_PIECES

    def _error(self, event: TurnErrorEvent) -> tuple[Piece, ...]:
        if not event.will_retry:
            self.last_error = event
        return _NO_PIECES

    def _completed(self, event: TurnCompleted) -> tuple[Piece, ...]:
        self.completed = event
        return _NO_PIECES

    # -- results ---------------------------------------------------------------

    def usage(self) -> Usage:
        if self._total is None or self._baseline is None:
            return ZERO_USAGE
        turn = _minus(self._total, self._baseline)
        return Usage(
            prompt_tokens=turn.input_tokens,
            completion_tokens=turn.output_tokens,
            total_tokens=turn.total_tokens,
            cached_tokens=turn.cached_input_tokens,
            reasoning_tokens=turn.reasoning_output_tokens,
        )

    def finish_reason(self) -> str:
        return "stop"

    def failure(self) -> Failure | None:
        """None for a completed turn, else what went wrong."""
        if self._refusal is not None:
            return self._refusal
        done = self.completed
        if done is not None and done.status is TurnStatus.COMPLETED:
            return None
        if done is None:
            return Failure("the turn ended without a result")
        if done.status is TurnStatus.INTERRUPTED:
            return Failure("the turn was interrupted", code="turn_interrupted")
        message = done.error_message or (
            self.last_error.message if self.last_error else "the turn failed"
        )
        info = done.codex_error_info
        if info is None and self.last_error is not None:
            info = self.last_error.codex_error_info
        return classify_failure(message, info)


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
    if key == "responseTooManyFailedAttempts" and isinstance(info, dict):
        status = (info.get(key) or {}).get("httpStatusCode")
        if status == 429:
            return Failure(message, "rate_limit_error", "rate_limit_exceeded", 429)
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
