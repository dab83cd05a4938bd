"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``,
and the one table from the supervisor's kinds to them.

Every way a turn can be refused (:class:`~supervisor.RefusalKind`), fail
(:class:`~supervisor.FailureKind`) or be failed by codex (its
``codexErrorInfo``) maps here, and only here, to an HTTP status, an OpenAI
error type and a code. Every front door answers with these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from bridge.protocol import TurnStatus
from supervisor import CodexError, FailureKind, RefusalKind, TurnOutcome, TurnRefused


class ApiError(Exception):
    """An error answered to the client instead of a completion."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        close_connection: bool = False,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        #: Answered before the request body was read to its end: the
        #: connection cannot serve another request, and the client must know.
        self.close_connection = close_connection
        #: More headers for the answer (e.g. WWW-Authenticate).
        self.headers = list(headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def encode(self) -> bytes:
        return orjson.dumps(self.body())


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def error_type_for_status(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status in (401, 403):
        return "authentication_error"
    if status == 404:
        return "invalid_request_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


#: (HTTP status, OpenAI error type, code) of each way a turn is refused.
REFUSALS: dict[RefusalKind, tuple[int, str, str]] = {
    RefusalKind.OVERLOADED: (429, "rate_limit_error", "rate_limit_exceeded"),
    RefusalKind.NO_CHILD: (503, "server_error", "no_codex_available"),
    RefusalKind.NOT_AUTHENTICATED: (503, "server_error", "codex_not_authenticated"),
    RefusalKind.CODEX_REJECTED: (502, "server_error", "codex_error"),
    RefusalKind.INPUT_TOO_LARGE: (400, "invalid_request_error", "string_above_max_length"),
    RefusalKind.THREAD_UNAVAILABLE: (409, "invalid_request_error", "thread_unavailable"),
    RefusalKind.SHUTTING_DOWN: (503, "server_error", "shutting_down"),
}

#: … of each way the supervisor ends a turn.
FAILURES: dict[FailureKind, tuple[int, str, str]] = {
    FailureKind.IDLE_TIMEOUT: (504, "server_error", "timeout"),
    FailureKind.TURN_TIMEOUT: (504, "server_error", "timeout"),
    FailureKind.RETRY_TIMEOUT: (502, "server_error", "model_unreachable"),
    FailureKind.CHILD_EXITED: (502, "server_error", "codex_exited"),
    FailureKind.SHUTDOWN: (503, "server_error", "service_shutting_down"),
    FailureKind.CONSUMER_TOO_SLOW: (502, "server_error", "client_too_slow"),
    FailureKind.CANCELLED: (502, "server_error", "codex_turn_failed"),
}

#: … of a turn codex interrupted.
INTERRUPTED = (502, "server_error", "turn_interrupted")

#: … of codex's own errors, by the name of its ``codexErrorInfo``.
CODEX_ERRORS: dict[str, tuple[int, str, str]] = {
    "usageLimitExceeded": (429, "insufficient_quota", "insufficient_quota"),
    # The model provider refused codex's credentials: an operator's problem.
    "unauthorized": (502, "authentication_error", "model_auth_failed"),
    "contextWindowExceeded": (400, "invalid_request_error", "context_length_exceeded"),
}

#: … of codex's errors that carry the model provider's HTTP status.
CODEX_HTTP_STATUSES: dict[int, tuple[int, str, str]] = {
    429: (429, "rate_limit_error", "rate_limit_exceeded"),
    401: CODEX_ERRORS["unauthorized"],
    403: CODEX_ERRORS["unauthorized"],
}

#: … of any other error codex reports.
CODEX_FAILED = (502, "server_error", "codex_turn_failed")


def _error(entry: tuple[int, str, str], message: str) -> ApiError:
    status, type_, code = entry
    return ApiError(status, message, type=type_, code=code)


def refusal_error(refusal: TurnRefused) -> ApiError:
    """What a client is told when no turn could start."""
    error = _error(REFUSALS[refusal.kind], refusal.message)
    error.retry_after_s = refusal.retry_after_s
    return error


def _provider_status(error: CodexError) -> int:
    """The model provider's HTTP status, when codex tells it (else 0)."""
    info = error.info
    detail = info.get(error.kind) if isinstance(info, dict) else None
    status = detail.get("httpStatusCode") if isinstance(detail, dict) else None
    return status if isinstance(status, int) else 0


def codex_error_entry(error: CodexError) -> tuple[int, str, str]:
    if error.kind == "usageLimitExceeded":  # whatever HTTP status it came with
        return CODEX_ERRORS[error.kind]
    by_status = CODEX_HTTP_STATUSES.get(_provider_status(error))
    if by_status is not None:
        return by_status
    return CODEX_ERRORS.get(error.kind or "", CODEX_FAILED)


def turn_error(outcome: TurnOutcome) -> ApiError | None:
    """What a client is told about a turn that did not complete (None: it
    completed, or stopped at the model's output limit — a "length" finish)."""
    if outcome.completed or outcome.hit_output_limit:
        return None
    if outcome.failure is not None:
        return _error(FAILURES[outcome.failure], outcome.message or "the turn failed")
    if outcome.status is TurnStatus.INTERRUPTED:
        return _error(INTERRUPTED, "the turn was interrupted")
    message = outcome.message or "the turn failed"
    if outcome.codex_error is None:
        return _error(CODEX_FAILED, message)
    return _error(codex_error_entry(outcome.codex_error), message)
