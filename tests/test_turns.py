"""How an answer ends (finish reason, error, usage) and the answer to remember,
from turns driven by notifications — no process, no server."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.messages import Notification
from bridge.protocol import TokenCounts
from http_front.errors import ApiError
from http_front.pieces import Usage
from http_front.turns import Answer, Attempt, Ending, FinishReason, answer_of, ending
from supervisor import FailureKind, ThreadUnavailable, Turn
from supervisor.outcome import NoChildAvailable, Overloaded

THREAD = "thread-1"
TURN = "turn-1"
LIMIT_MESSAGE = "Incomplete response returned, reason: max_output_tokens"


def counts(total: int, input_: int, cached: int, output: int, reasoning: int) -> dict[str, int]:
    return {
        "totalTokens": total,
        "inputTokens": input_,
        "cachedInputTokens": cached,
        "outputTokens": output,
        "reasoningOutputTokens": reasoning,
    }


def usage_update(total: dict[str, int], last: dict[str, int]) -> Notification:
    return Notification(
        "thread/tokenUsage/updated",
        {"threadId": THREAD, "turnId": TURN, "tokenUsage": {"total": total, "last": last}},
    )


def completed(status: str, error: dict[str, Any] | None = None) -> Notification:
    turn: dict[str, Any] = {"id": TURN, "status": status, "items": []}
    if error is not None:
        turn["error"] = error
    return Notification("turn/completed", {"threadId": THREAD, "turn": turn})


ZERO = TokenCounts()


def new_turn(baseline: TokenCounts | None = ZERO) -> Turn:
    turn = Turn(
        thread_id=THREAD,
        child_name="child-0",
        model="gpt-test",
        buffer_size=16,
        usage_baseline=baseline,
    )
    turn.turn_id = TURN
    return turn


def driven(*notifications: Notification) -> Turn:
    turn = new_turn()
    for notification in notifications:
        turn.on_notification(notification)
    return turn


USED = usage_update(counts(120, 100, 40, 20, 5), counts(120, 100, 40, 20, 5))
USAGE = Usage(
    prompt_tokens=100, completion_tokens=20, total_tokens=120, cached_tokens=40, reasoning_tokens=5
)
NONE_USED = Usage(0, 0, 0, 0, 0)


def error_entry(error: ApiError | None) -> tuple[int, str, str | None, str]:
    assert error is not None
    return error.status, error.type, error.code, error.message


# -- ending -------------------------------------------------------------------------------


async def test_a_completed_turn_stops_with_its_usage() -> None:
    turn = driven(USED, completed("completed"))
    assert ending(Attempt(turn, 0)) == Ending(FinishReason.STOP, None, USAGE)


async def test_usage_is_the_turns_share_of_the_threads_total() -> None:
    turn = new_turn(baseline=TokenCounts(1000, 900, 0, 100, 0))
    turn.on_notification(usage_update(counts(1120, 1000, 40, 120, 5), counts(120, 100, 40, 20, 5)))
    turn.on_notification(completed("completed"))
    assert ending(Attempt(turn, 0)).usage == Usage(100, 20, 120, 40, 5)


async def test_the_output_limit_ends_with_length_and_no_error() -> None:
    turn = driven(USED, completed("failed", {"message": LIMIT_MESSAGE}))
    assert ending(Attempt(turn, 0)) == Ending(FinishReason.LENGTH, None, USAGE)


async def test_a_turn_codex_failed_is_an_error() -> None:
    error = {"message": "too long", "codexErrorInfo": "contextWindowExceeded"}
    turn = driven(USED, completed("failed", error))
    end = ending(Attempt(turn, 0))
    assert end.finish_reason is FinishReason.ERROR
    assert end.usage == USAGE
    assert error_entry(end.error) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "too long",
    )


async def test_codex_error_detail_sent_before_turn_completed_is_used() -> None:
    """codex's ``error`` notification (not retried) says more than its turn/completed."""
    error = Notification(
        "error",
        {
            "threadId": THREAD,
            "turnId": TURN,
            "willRetry": False,
            "error": {
                "message": "quota used up",
                "codexErrorInfo": {"usageLimitExceeded": {"httpStatusCode": 429}},
            },
        },
    )
    turn = driven(error, completed("failed"))
    end = ending(Attempt(turn, 0))
    assert end.finish_reason is FinishReason.ERROR
    assert end.usage == NONE_USED
    assert error_entry(end.error) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "quota used up",
    )


async def test_an_interrupted_turn_is_an_error() -> None:
    turn = driven(completed("interrupted"))
    end = ending(Attempt(turn, 0))
    assert end.finish_reason is FinishReason.ERROR
    assert error_entry(end.error) == (
        502,
        "server_error",
        "turn_interrupted",
        "the turn was interrupted",
    )


async def test_a_turn_the_supervisor_failed_is_an_error() -> None:
    turn = driven(USED)
    turn.fail(FailureKind.IDLE_TIMEOUT, "codex sent nothing for 5s; the turn was stopped")
    # codex's own end, later, changes nothing.
    turn.on_notification(completed("completed"))
    end = ending(Attempt(turn, 0))
    assert end.finish_reason is FinishReason.ERROR
    assert end.usage == USAGE
    assert error_entry(end.error) == (
        504,
        "server_error",
        "timeout",
        "codex sent nothing for 5s; the turn was stopped",
    )


async def test_a_refusal_before_any_turn_is_an_error_with_no_usage() -> None:
    end = ending(Attempt(None, 0, Overloaded("every slot is busy", retry_after_s=2)))
    assert end.finish_reason is FinishReason.ERROR
    assert end.usage == NONE_USED
    assert error_entry(end.error) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        "every slot is busy",
    )
    assert end.error is not None
    assert end.error.retry_after_s == 2


async def test_a_refusal_after_a_turn_opened_counts_its_usage() -> None:
    turn = driven(USED)
    end = ending(Attempt(turn, 1, ThreadUnavailable("thread gone")))
    assert end.finish_reason is FinishReason.ERROR
    assert end.usage == USAGE
    assert error_entry(end.error) == (
        409,
        "invalid_request_error",
        "thread_unavailable",
        "thread gone",
    )


# -- answer_of ----------------------------------------------------------------------------


async def test_the_answer_of_a_completed_turn() -> None:
    turn = driven(completed("completed"))
    assert answer_of(Attempt(turn, 1), "the answer") == Answer(1, THREAD, TURN, "the answer")


async def test_the_answer_of_a_turn_stopped_at_the_output_limit() -> None:
    turn = driven(completed("failed", {"message": LIMIT_MESSAGE}))
    assert answer_of(Attempt(turn, 0), "cut short") == Answer(0, THREAD, TURN, "cut short")


@pytest.mark.parametrize(
    "how", ["codex-failed", "interrupted", "supervisor-failed", "unfinished", "refused"]
)
async def test_no_answer_is_remembered_for_a_turn_that_did_not_complete(how: str) -> None:
    turn: Turn | None = new_turn()
    assert turn is not None
    refusal = None
    if how == "codex-failed":
        turn.on_notification(completed("failed", {"message": "boom"}))
    elif how == "interrupted":
        turn.on_notification(completed("interrupted"))
    elif how == "supervisor-failed":
        turn.fail(FailureKind.CHILD_EXITED, "codex exited")
    elif how == "refused":
        turn, refusal = None, NoChildAvailable("no child")
    attempt = Attempt(turn, 0, refusal)
    assert answer_of(attempt, "partial") is None
