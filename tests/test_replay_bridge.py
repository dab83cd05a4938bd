"""The codex client and the multiplexer against replayed real transcripts."""

from __future__ import annotations

import pytest
import trio

from bridge.codex import ApprovalPolicy, approval_answer
from bridge.messages import ServerRequest
from bridge.peer import ServerRequestRefused
from bridge.protocol import (
    AgentMessageDelta,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TurnErrorEvent,
    TurnEvent,
    TurnStatus,
)
from fixtures.transcript import load, transcript_path
from supervisor import TurnEnded, TurnRequest
from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import Pool, PoolPolicy
from tests.helpers import replay_launch


async def run_recorded_turn(
    name: str, *, effort: str | None = None, policy: PoolPolicy | None = None
) -> list[TurnEvent | TurnEnded]:
    prompt = load(transcript_path(name)).header["prompt"]
    pool = Pool(1, replay_launch(name), policy=policy)
    mux = TurnMultiplexer(pool)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            models = await mux.models()
            assert [m.id for m in models] == ["scripted-model"]
            assert models[0].is_default
            async with mux.open_turn(TurnRequest(prompt, effort=effort)) as turn:
                events = [event async for event in turn]
            nursery.cancel_scope.cancel()
    return events


async def test_liveness_checks_do_not_disturb_a_replay() -> None:
    """The pool's checks come on a timer, in the middle of recorded exchanges."""
    policy = PoolPolicy(liveness_interval_s=0.001, liveness_timeout_s=5)
    events = await run_recorded_turn("exec", policy=policy)
    final = events[-1]
    assert isinstance(final, TurnEnded)
    assert final.outcome.status is TurnStatus.COMPLETED


async def test_handshake_and_typed_results() -> None:
    pool = Pool(1, replay_launch("plain"))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            (child,) = pool.children
            assert child.auth_problem is None  # the scripted provider has its own key
            models = child.models  # listed during the handshake
            nursery.cancel_scope.cancel()
    assert models is not None
    assert models[0].model == "scripted-model"
    assert {e.reasoning_effort for e in models[0].supported_reasoning_efforts} >= {"low", "high"}


async def test_command_execution_events_reach_the_turn() -> None:
    events = await run_recorded_turn("exec")
    started = [
        e for e in events if isinstance(e, ItemStarted) and e.item_type == "commandExecution"
    ]
    completed = [
        e for e in events if isinstance(e, ItemCompleted) and e.item_type == "commandExecution"
    ]
    assert len(started) == 1
    assert len(completed) == 1
    assert "echo line-$i" in started[0].item["command"]
    assert completed[0].item["exitCode"] == 0
    assert "done-42" in completed[0].item["aggregatedOutput"]
    output = [
        e.params["delta"]
        for e in events
        if isinstance(e, OtherEvent) and e.method == "item/commandExecution/outputDelta"
    ]
    # streamed while the command ran (the first line came with its start)
    assert len(output) >= 2
    assert "".join(output).endswith("line-2\nline-3\ndone-42\n")
    assert completed[0].item["aggregatedOutput"] == "line-1\nline-2\nline-3\ndone-42\n"
    text = "".join(e.delta for e in events if isinstance(e, AgentMessageDelta))
    assert text.startswith("Ran `for i in 1 2 3")
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].outcome.status is TurnStatus.COMPLETED


async def test_retried_stream_shows_progress_then_a_new_item() -> None:
    events = await run_recorded_turn("stream_drop")
    retries = [e for e in events if isinstance(e, TurnErrorEvent)]
    assert retries
    assert all(e.will_retry for e in retries)
    items = {e.item_id for e in events if isinstance(e, AgentMessageDelta)}
    assert len(items) == 2  # codex starts a new agentMessage item after the drop
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].outcome.status is TurnStatus.COMPLETED


async def test_reasoning_summary_deltas() -> None:
    events = await run_recorded_turn("reasoning", effort="low")
    reasoning = [e for e in events if isinstance(e, ReasoningDelta)]
    assert reasoning
    assert not any(e.raw for e in reasoning)
    assert {e.index for e in reasoning} == {0, 1}


async def test_failed_turn_carries_codex_error_info() -> None:
    events = await run_recorded_turn("quota")
    final = events[-1]
    assert isinstance(final, TurnEnded)
    assert final.outcome.status is TurnStatus.FAILED
    assert final.outcome.codex_error is not None
    assert final.outcome.codex_error.info == "usageLimitExceeded"
    assert final.outcome.message == "Quota exceeded. Check your plan and billing details."


def _request(method: str) -> ServerRequest:
    return ServerRequest(0, method, {"threadId": "t"})


@pytest.mark.parametrize(
    ("policy", "v2", "legacy"),
    [
        (ApprovalPolicy.DECLINE, "decline", "denied"),
        (ApprovalPolicy.ACCEPT, "accept", "approved"),
        (ApprovalPolicy.CANCEL, "cancel", "abort"),
    ],
)
def test_approval_answers(policy: ApprovalPolicy, v2: str, legacy: str) -> None:
    for method in ("item/commandExecution/requestApproval", "item/fileChange/requestApproval"):
        assert approval_answer(policy, _request(method)) == {"decision": v2}
    for method in ("execCommandApproval", "applyPatchApproval"):
        assert approval_answer(policy, _request(method)) == {"decision": legacy}


@pytest.mark.parametrize(
    "method",
    [
        "item/tool/requestUserInput",
        "mcpServer/elicitation/request",
        "item/tool/call",
        "account/chatgptAuthTokens/refresh",
    ],
)
def test_requests_the_bridge_cannot_answer_are_refused(method: str) -> None:
    with pytest.raises(ServerRequestRefused, match=method):
        approval_answer(ApprovalPolicy.ACCEPT, _request(method))
