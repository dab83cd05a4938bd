"""The one table from the supervisor's kinds to OpenAI errors, written out here."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bridge.protocol import TurnStatus
from http_front.errors import (
    CODEX_ERRORS,
    CODEX_HTTP_STATUSES,
    FAILURES,
    REFUSALS,
    ApiError,
    bad_request,
    error_type_for_status,
    refusal_error,
    turn_error,
)
from supervisor import CodexError, FailureKind, RefusalKind, TurnOutcome, TurnRefused
from supervisor.outcome import (
    CodexRejected,
    InputTooLarge,
    NoChildAvailable,
    NotAuthenticated,
    Overloaded,
    ShuttingDown,
    ThreadUnavailable,
)

#: What each refusal must be answered with: (status, type, code).
EXPECTED_REFUSALS: dict[RefusalKind, tuple[int, str, str]] = {
    RefusalKind.OVERLOADED: (429, "rate_limit_error", "rate_limit_exceeded"),
    RefusalKind.NO_CHILD: (503, "server_error", "no_codex_available"),
    RefusalKind.NOT_AUTHENTICATED: (503, "server_error", "codex_not_authenticated"),
    RefusalKind.CODEX_REJECTED: (502, "server_error", "codex_error"),
    RefusalKind.INPUT_TOO_LARGE: (400, "invalid_request_error", "string_above_max_length"),
    RefusalKind.THREAD_UNAVAILABLE: (409, "invalid_request_error", "thread_unavailable"),
    RefusalKind.SHUTTING_DOWN: (503, "server_error", "shutting_down"),
}

#: … each way the supervisor ends a turn.
EXPECTED_FAILURES: dict[FailureKind, tuple[int, str, str]] = {
    FailureKind.CHILD_EXITED: (502, "server_error", "codex_exited"),
    FailureKind.IDLE_TIMEOUT: (504, "server_error", "timeout"),
    FailureKind.TURN_TIMEOUT: (504, "server_error", "timeout"),
    FailureKind.RETRY_TIMEOUT: (502, "server_error", "model_unreachable"),
    FailureKind.CONSUMER_TOO_SLOW: (502, "server_error", "client_too_slow"),
    FailureKind.CANCELLED: (502, "server_error", "codex_turn_failed"),
    FailureKind.SHUTDOWN: (503, "server_error", "service_shutting_down"),
}

#: The refusal class of each kind.
REFUSAL_CLASSES: dict[RefusalKind, type[TurnRefused]] = {
    RefusalKind.OVERLOADED: Overloaded,
    RefusalKind.NO_CHILD: NoChildAvailable,
    RefusalKind.NOT_AUTHENTICATED: NotAuthenticated,
    RefusalKind.CODEX_REJECTED: CodexRejected,
    RefusalKind.INPUT_TOO_LARGE: InputTooLarge,
    RefusalKind.THREAD_UNAVAILABLE: ThreadUnavailable,
    RefusalKind.SHUTTING_DOWN: ShuttingDown,
}


def entry(error: ApiError | None) -> tuple[int, str, str | None]:
    assert error is not None
    return error.status, error.type, error.code


# -- completeness -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(RefusalKind))
def test_every_refusal_kind_has_its_entry(kind: RefusalKind) -> None:
    assert REFUSALS[kind] == EXPECTED_REFUSALS[kind]


@pytest.mark.parametrize("kind", list(FailureKind))
def test_every_failure_kind_has_its_entry(kind: FailureKind) -> None:
    assert FAILURES[kind] == EXPECTED_FAILURES[kind]


def test_the_tables_have_nothing_else() -> None:
    assert set(REFUSALS) == set(RefusalKind) == set(EXPECTED_REFUSALS)
    assert set(FAILURES) == set(FailureKind) == set(EXPECTED_FAILURES)
    assert set(CODEX_ERRORS) == {"usageLimitExceeded", "unauthorized", "contextWindowExceeded"}
    assert set(CODEX_HTTP_STATUSES) == {429, 401, 403}


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(RefusalKind))
def test_refusal_error_of_each_kind(kind: RefusalKind) -> None:
    refusal = REFUSAL_CLASSES[kind](f"refused: {kind}")
    assert refusal.kind is kind
    error = refusal_error(refusal)
    assert entry(error) == EXPECTED_REFUSALS[kind]
    assert error.message == f"refused: {kind}"
    assert error.param is None


def test_refusal_error_carries_retry_after() -> None:
    assert refusal_error(Overloaded("queue full", retry_after_s=7.5)).retry_after_s == 7.5
    assert refusal_error(Overloaded("queue full")).retry_after_s is None
    # A class default is carried too.
    assert refusal_error(NoChildAvailable("starting")).retry_after_s == 5.0
    assert refusal_error(NoChildAvailable("starting", retry_after_s=1)).retry_after_s == 1


# -- turns the supervisor ended -----------------------------------------------------------


@pytest.mark.parametrize("kind", list(FailureKind))
def test_turn_error_of_each_failure(kind: FailureKind) -> None:
    error = turn_error(TurnOutcome(TurnStatus.FAILED, kind, f"ended: {kind}"))
    assert entry(error) == EXPECTED_FAILURES[kind]
    assert error is not None
    assert error.message == f"ended: {kind}"


def test_a_failure_without_a_message_says_so() -> None:
    error = turn_error(TurnOutcome(TurnStatus.FAILED, FailureKind.CHILD_EXITED))
    assert error is not None
    assert error.message == "the turn failed"


def test_a_failure_wins_over_an_output_limit_message() -> None:
    outcome = TurnOutcome(TurnStatus.FAILED, FailureKind.IDLE_TIMEOUT, "max_output_tokens?")
    assert not outcome.hit_output_limit
    assert entry(turn_error(outcome)) == (504, "server_error", "timeout")


# -- turns codex ended --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ("usageLimitExceeded", (429, "insufficient_quota", "insufficient_quota")),
        (
            {"usageLimitExceeded": {"httpStatusCode": 429}},
            (429, "insufficient_quota", "insufficient_quota"),
        ),
        (
            {"responseStreamDisconnected": {"httpStatusCode": 429}},
            (429, "rate_limit_error", "rate_limit_exceeded"),
        ),
        (
            {"responseStreamDisconnected": {"httpStatusCode": 401}},
            (502, "authentication_error", "model_auth_failed"),
        ),
        (
            {"httpConnectionFailed": {"httpStatusCode": 403}},
            (502, "authentication_error", "model_auth_failed"),
        ),
        ("unauthorized", (502, "authentication_error", "model_auth_failed")),
        ("contextWindowExceeded", (400, "invalid_request_error", "context_length_exceeded")),
        (
            {"responseStreamDisconnected": {"httpStatusCode": 500}},
            (502, "server_error", "codex_turn_failed"),
        ),
        ({"responseStreamDisconnected": {}}, (502, "server_error", "codex_turn_failed")),
        ({"responseStreamDisconnected": None}, (502, "server_error", "codex_turn_failed")),
        ("somethingNew", (502, "server_error", "codex_turn_failed")),
        ({}, (502, "server_error", "codex_turn_failed")),
        (None, (502, "server_error", "codex_turn_failed")),
    ],
)
def test_codex_error_infos(info: Any, expected: tuple[int, str, str]) -> None:
    outcome = TurnOutcome(
        TurnStatus.FAILED, None, "codex said no", CodexError("codex said no", info)
    )
    error = turn_error(outcome)
    assert entry(error) == expected
    assert error is not None
    assert error.message == "codex said no"


def test_a_codex_failure_without_an_error_or_message() -> None:
    error = turn_error(TurnOutcome(TurnStatus.FAILED))
    assert entry(error) == (502, "server_error", "codex_turn_failed")
    assert error is not None
    assert error.message == "the turn failed"


def test_an_interrupted_turn() -> None:
    error = turn_error(TurnOutcome(TurnStatus.INTERRUPTED))
    assert entry(error) == (502, "server_error", "turn_interrupted")
    assert error is not None
    assert error.message == "the turn was interrupted"


def test_a_completed_turn_is_no_error() -> None:
    assert turn_error(TurnOutcome(TurnStatus.COMPLETED)) is None
    # codex may attach an error to a completed turn; it still completed.
    completed = TurnOutcome(TurnStatus.COMPLETED, None, None, CodexError("x", "unauthorized"))
    assert turn_error(completed) is None


def test_the_output_limit_is_no_error() -> None:
    message = "Incomplete response returned, reason: max_output_tokens"
    outcome = TurnOutcome(TurnStatus.FAILED, None, message, CodexError(message))
    assert outcome.hit_output_limit
    assert turn_error(outcome) is None
    # Only a failed turn stopped there counts.
    interrupted = TurnOutcome(TurnStatus.INTERRUPTED, None, message)
    assert entry(turn_error(interrupted)) == (502, "server_error", "turn_interrupted")


# -- the error body -----------------------------------------------------------------------


def test_api_error_body_and_encoding() -> None:
    error = bad_request("messages is required", param="messages")
    assert (error.status, error.type, error.code) == (400, "invalid_request_error", None)
    expected = {
        "error": {
            "message": "messages is required",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }
    assert error.body() == expected
    assert orjson.loads(error.encode()) == expected
    assert not error.close_connection
    assert error.headers == []


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "authentication_error"),
        (404, "invalid_request_error"),
        (409, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_error_type_for_status(status: int, type_: str) -> None:
    assert error_type_for_status(status) == type_
