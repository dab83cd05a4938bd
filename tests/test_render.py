"""TurnRenderer: typed turn events in, API-neutral pieces out — no process, no server."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.protocol import (
    AgentMessageDelta,
    ClientToolCall,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TokenCounts,
    TokenUsageUpdated,
    TurnErrorEvent,
    TurnStarted,
    TurnStatus,
)
from http_front.pieces import (
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
from http_front.render import ITEM_RENDERERS, TurnRenderer
from supervisor import CodexError, FailureKind, TurnEnded, TurnOutcome

T = "turn-1"


def delta(item_id: str, text: str) -> AgentMessageDelta:
    return AgentMessageDelta(T, item_id, text)


def started(item: dict[str, Any]) -> ItemStarted:
    return ItemStarted(T, item)


def completed(item: dict[str, Any]) -> ItemCompleted:
    return ItemCompleted(T, item)


def retry(message: str = "stream disconnected") -> TurnErrorEvent:
    return TurnErrorEvent(T, message, will_retry=True)


def feed_all(renderer: TurnRenderer, *events: object) -> list[Piece]:
    return [piece for event in events for piece in renderer.feed(event)]


def shown_text(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, Text))


# -- agent text ---------------------------------------------------------------------------


def test_agent_deltas_stream_as_text_with_a_paragraph_per_message() -> None:
    r = TurnRenderer()
    assert r.feed(delta("m1", "Hello")) == [Text("Hello", new_paragraph=True)]
    assert r.feed(delta("m1", " world")) == [Text(" world")]
    assert r.feed(delta("m1", "")) == []
    assert r.feed(delta("m2", "Second")) == [Text("Second", new_paragraph=True)]
    assert r.feed(delta("m2", " part")) == [Text(" part")]


def test_a_streamed_message_is_not_repeated_when_it_completes() -> None:
    r = TurnRenderer()
    r.feed(delta("m1", "Hello"))
    assert r.feed(completed({"id": "m1", "type": "agentMessage", "text": "Hello"})) == []


def test_a_message_that_arrives_whole_is_shown_once() -> None:
    r = TurnRenderer()
    item = {"id": "m1", "type": "agentMessage", "text": "All at once"}
    assert r.feed(completed(item)) == [Text("All at once", new_paragraph=True)]
    assert r.feed(completed(item)) == []
    assert r.feed(completed({"id": "m2", "type": "agentMessage", "text": ""})) == []


def test_a_retried_call_repeating_the_text_is_held_back_then_only_the_new_part_shows() -> None:
    r = TurnRenderer()
    assert shown_text(feed_all(r, delta("m1", "Hello "), delta("m1", "world"))) == "Hello world"
    assert r.feed(retry("stream disconnected before completion")) == [
        Status("Connection to the model lost; retrying (stream disconnected before completion)")
    ]
    # The new call starts a new item that repeats what the client already has.
    assert r.feed(delta("m2", "Hello")) == []
    assert r.feed(delta("m2", " wor")) == []
    assert r.feed(delta("m2", "ld, and more")) == [Text(", and more")]
    assert r.feed(delta("m2", " still")) == [Text(" still")]
    # ... and its completion shows nothing again.
    done = completed({"id": "m2", "type": "agentMessage", "text": "Hello world, and more still"})
    assert r.feed(done) == []


def test_a_retried_call_that_diverges_is_shown_as_a_new_paragraph() -> None:
    r = TurnRenderer()
    feed_all(r, delta("m1", "The answer is 4"))
    r.feed(retry())
    assert r.feed(delta("m2", "The answer")) == []
    assert r.feed(delta("m2", " was")) == [Text("The answer was", new_paragraph=True)]
    assert r.feed(delta("m2", " 5")) == [Text(" 5")]


def test_two_retries_in_a_row_still_hold_back_the_first_calls_text() -> None:
    r = TurnRenderer()
    feed_all(r, delta("m1", "abc"))
    r.feed(retry())
    assert r.feed(delta("m2", "ab")) == []
    r.feed(retry())
    assert r.feed(delta("m3", "abc")) == []
    assert r.feed(delta("m3", "def")) == [Text("def")]


def test_a_retry_before_any_text_holds_nothing_back() -> None:
    r = TurnRenderer()
    r.feed(retry())
    assert r.feed(delta("m1", "Fresh")) == [Text("Fresh", new_paragraph=True)]


def test_a_final_error_shows_nothing_itself() -> None:
    r = TurnRenderer()
    assert r.feed(TurnErrorEvent(T, "boom", will_retry=False)) == []


def test_text_after_a_tool_is_a_new_answer_not_a_repeat() -> None:
    r = TurnRenderer()
    feed_all(r, delta("m1", "Let me look"))
    r.feed(retry())
    r.feed(completed({"id": "c1", "type": "commandExecution", "command": "ls", "exitCode": 0}))
    assert r.feed(delta("m2", "Let me look")) == [Text("Let me look", new_paragraph=True)]


# -- reasoning ----------------------------------------------------------------------------


def test_reasoning_parts_are_told_apart_by_item_and_index() -> None:
    r = TurnRenderer()
    assert r.feed(ReasoningDelta(T, "r1", "Think", 0)) == [Reasoning("Think", new_part=False)]
    assert r.feed(ReasoningDelta(T, "r1", "ing", 0)) == [Reasoning("ing", new_part=False)]
    assert r.feed(ReasoningDelta(T, "r1", "", 1)) == []
    assert r.feed(ReasoningDelta(T, "r1", "Part two", 1)) == [Reasoning("Part two", new_part=True)]
    assert r.feed(ReasoningDelta(T, "r2", "Other item", 0)) == [
        Reasoning("Other item", new_part=True)
    ]
    raw = ReasoningDelta(T, "r2", " raw", 0, raw=True)
    assert r.feed(raw) == [Reasoning(" raw", new_part=False)]


def test_reasoning_item_started_is_a_status() -> None:
    r = TurnRenderer()
    assert r.feed(started({"id": "r1", "type": "reasoning"})) == [Status("Thinking…")]


def test_a_streamed_reasoning_item_is_not_repeated_when_it_completes() -> None:
    r = TurnRenderer()
    r.feed(ReasoningDelta(T, "r1", "Plan", 0))
    item = {"id": "r1", "type": "reasoning", "summary": ["Plan"]}
    assert r.feed(completed(item)) == []


def test_a_reasoning_summary_that_arrives_whole_is_shown_whole() -> None:
    r = TurnRenderer()
    item = {"id": "r1", "type": "reasoning", "summary": ["First", "Second"]}
    assert r.feed(completed(item)) == [Reasoning("First\n\nSecond", new_part=False)]
    assert r.feed(completed(item)) == []
    other = {"id": "r2", "type": "reasoning", "summary": ["Third"]}
    assert r.feed(completed(other)) == [Reasoning("Third", new_part=True)]
    assert r.feed(completed({"id": "r3", "type": "reasoning", "summary": []})) == []
    assert r.feed(completed({"id": "r4", "type": "reasoning", "summary": "not a list"})) == []


# -- commands -----------------------------------------------------------------------------


def test_command_started_streamed_and_completed() -> None:
    r = TurnRenderer()
    command = "/bin/bash -lc 'ls -la'"
    assert r.feed(started({"id": "c1", "type": "commandExecution", "command": command})) == [
        Status("Running `ls -la`")
    ]
    out = "item/commandExecution/outputDelta"
    assert r.feed(OtherEvent(out, {"itemId": "c1", "delta": "a.txt\nb.txt\n"})) == [
        Status("Running… b.txt")
    ]
    assert r.feed(OtherEvent(out, {"itemId": "c1", "delta": "\n"})) == []
    assert r.feed(OtherEvent(out, {"itemId": "c1", "delta": "x" * 200})) == [
        Status("Running… " + "x" * 120)
    ]
    item = {
        "id": "c1",
        "type": "commandExecution",
        "command": command,
        "status": "completed",
        "exitCode": 0,
        "durationMs": 12,
    }
    # Without an aggregatedOutput the streamed output is the card's.
    assert r.feed(completed(item)) == [
        CommandCard(command, "completed", 0, 12, "a.txt\nb.txt\n\n" + "x" * 200)
    ]


def test_command_aggregated_output_wins_over_the_streamed_one() -> None:
    r = TurnRenderer()
    r.feed(OtherEvent("item/commandExecution/outputDelta", {"itemId": "c1", "delta": "partial"}))
    item = {
        "id": "c1",
        "type": "commandExecution",
        "command": "false",
        "status": "failed",
        "exitCode": 1,
        "aggregatedOutput": "whole output",
    }
    assert r.feed(completed(item)) == [CommandCard("false", "failed", 1, None, "whole output")]


def test_a_command_without_status_or_numbers_defaults() -> None:
    r = TurnRenderer()
    item = {"id": "c9", "type": "commandExecution", "command": "true", "exitCode": "0"}
    assert r.feed(completed(item)) == [CommandCard("true", "completed", None, None, "")]


def test_declined_approval_is_a_status_and_marks_the_card() -> None:
    r = TurnRenderer()
    command = "/bin/bash -lc 'rm -rf build'"
    r.feed(started({"id": "c1", "type": "commandExecution", "command": command}))
    approval = OtherEvent(
        "bridge/approval",
        {
            "itemId": "c1",
            "command": command,
            "decision": "decline",
            "policy": "read-only-commands",
            "method": "item/commandExecution/requestApproval",
        },
    )
    assert r.feed(approval) == [Status("Approval for rm -rf build: decline (policy)")]
    item = {"id": "c1", "type": "commandExecution", "command": command, "status": "declined"}
    assert r.feed(completed(item)) == [
        CommandCard(command, "declined", None, None, "", declined_by="read-only-commands")
    ]


def test_an_accepted_approval_marks_nothing() -> None:
    r = TurnRenderer()
    approval = {"itemId": "c1", "command": "ls", "decision": "accept", "policy": "accept"}
    assert r.feed(OtherEvent("bridge/approval", approval)) == [
        Status("Approval for ls: accept (policy)")
    ]
    item = {"id": "c1", "type": "commandExecution", "command": "ls", "exitCode": 0}
    (card,) = r.feed(completed(item))
    assert isinstance(card, CommandCard)
    assert card.declined_by is None


def test_a_declined_file_change_without_policy_names_the_decision() -> None:
    r = TurnRenderer()
    approval = {"itemId": "f1", "decision": "cancel"}
    assert r.feed(OtherEvent("bridge/approval", approval)) == [
        Status("Approval for a file change: cancel (policy)")
    ]
    item = {
        "id": "f1",
        "type": "fileChange",
        "status": "declined",
        "changes": [{"path": "a.py", "kind": {"type": "update"}, "diff": "@@"}],
    }
    assert r.feed(completed(item)) == [
        FileChangeCard((("a.py", "update", "@@"),), "declined", declined_by="cancel")
    ]


# -- file changes -------------------------------------------------------------------------


def test_file_change_started_and_completed() -> None:
    r = TurnRenderer()
    changes = [
        {"path": "new.py", "kind": {"type": "add"}, "diff": "print(1)\n"},
        {"path": "old.py", "kind": "delete", "diff": "gone\n"},
    ]
    assert r.feed(started({"id": "f1", "type": "fileChange", "changes": changes})) == [
        Status("Editing files: new.py, old.py")
    ]
    done = completed({"id": "f1", "type": "fileChange", "changes": changes, "status": "completed"})
    assert r.feed(done) == [
        FileChangeCard(
            (("new.py", "add", "print(1)\n"), ("old.py", "delete", "gone\n")), "completed"
        )
    ]


# -- tools --------------------------------------------------------------------------------


def test_mcp_tool_call_ok_and_failed() -> None:
    r = TurnRenderer()
    start = {"id": "t1", "type": "mcpToolCall", "server": "docs", "tool": "search"}
    assert r.feed(started(start)) == [Status("Calling docs/search")]
    ok = {
        **start,
        "arguments": {"q": "trio"},
        "result": {"content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        "error": None,
    }
    assert r.feed(completed(ok)) == [
        ToolCard(
            "docs/search", {"q": "trio"}, "one\ntwo", "Called MCP tool docs/search", "one\ntwo"
        )
    ]
    failed = {**start, "id": "t2", "arguments": None, "error": {"message": "no index"}}
    assert r.feed(completed(failed)) == [
        ToolCard(
            "docs/search",
            {},
            "error: no index",
            "Failed MCP tool docs/search",
            "error: no index",
        )
    ]


def test_a_client_function_call_is_a_call_not_a_card() -> None:
    """Dynamic tools are the client's functions: the client sees the call
    (and shows it itself), never a card or a status line of the bridge's."""
    r = TurnRenderer()
    assert r.feed(started({"id": "d1", "type": "dynamicToolCall", "tool": "lookup"})) == []
    assert r.feed(started({"id": "d2", "type": "dynamicToolCall", "tool": "time"})) == []
    assert r.calls_awaited == 2  # both calls of the step are coming
    assert not r.calls_in
    first = ClientToolCall("turn-1", "call_1", "lookup", {"id": 7})
    assert r.feed(first) == [ClientCall("call_1", "lookup", '{"id":7}')]
    assert r.calls_awaited == 1
    assert not r.calls_in  # the second is still coming
    assert r.feed(ClientToolCall("turn-1", "call_2", "time", "{}")) == [
        ClientCall("call_2", "time", "{}")
    ]
    assert r.calls_awaited == 0
    assert r.calls_in
    contents = [{"type": "inputText", "text": "found"}]
    done = {"id": "d1", "type": "dynamicToolCall", "tool": "lookup", "contentItems": contents}
    assert r.feed(completed(done)) == []


def test_web_search_and_opened_page() -> None:
    r = TurnRenderer()
    assert r.feed(started({"id": "w1", "type": "webSearch", "query": "trio nursery"})) == [
        Status("Searching the web: trio nursery")
    ]
    search = {
        "id": "w1",
        "type": "webSearch",
        "query": "trio nursery",
        "action": {"type": "search", "query": "trio nursery"},
    }
    assert r.feed(completed(search)) == [
        ToolCard("web_search", {"query": "trio nursery"}, "", "Searched the web: trio nursery")
    ]
    page = {
        "id": "w2",
        "type": "webSearch",
        "query": "",
        "action": {"type": "openPage", "url": "https://trio.readthedocs.io/"},
    }
    assert r.feed(completed(page)) == [
        ToolCard("web_search", {"query": ""}, "", "Opened https://trio.readthedocs.io/")
    ]


def test_plan_item_is_a_card_and_an_empty_one_nothing() -> None:
    r = TurnRenderer()
    item = {"id": "p1", "type": "plan", "text": "1. read\n2. write"}
    assert r.feed(completed(item)) == [
        ToolCard("plan", {}, "", "Proposed plan", "1. read\n2. write")
    ]
    assert r.feed(completed({"id": "p2", "type": "plan", "text": ""})) == []


def test_plan_updates_are_cards_once_per_change() -> None:
    r = TurnRenderer()
    plan = [{"step": "read", "status": "completed"}, {"step": "write", "status": "inProgress"}]
    update = OtherEvent("turn/plan/updated", {"plan": plan, "explanation": "two steps"})
    card = PlanCard((("read", "completed"), ("write", "inProgress")), "two steps")
    assert r.feed(update) == [card]
    assert r.feed(update) == []  # the same plan again
    assert r.feed(OtherEvent("turn/plan/updated", {"plan": plan})) == []  # same steps
    done = [{"step": "read", "status": "completed"}, {"step": "write", "status": "completed"}]
    assert r.feed(OtherEvent("turn/plan/updated", {"plan": done, "explanation": 3})) == [
        PlanCard((("read", "completed"), ("write", "completed")), None)
    ]
    assert r.feed(OtherEvent("turn/plan/updated", {"plan": []})) == []


def test_image_view() -> None:
    r = TurnRenderer()
    item = {"id": "i1", "type": "imageView", "path": "/w/shot.png"}
    assert r.feed(completed(item)) == [
        ToolCard("view_image", {"path": "/w/shot.png"}, "", "Viewed image /w/shot.png")
    ]


def test_image_generation_ok_and_failed() -> None:
    r = TurnRenderer()
    ok = {"id": "g1", "type": "imageGeneration", "savedPath": "/w/cat.png", "revisedPrompt": "cat"}
    assert r.feed(completed(ok)) == [
        ToolCard("image_generation", {"prompt": "cat"}, "/w/cat.png", "Generated image /w/cat.png")
    ]
    failed = {"id": "g2", "type": "imageGeneration", "failure": "blocked by policy"}
    assert r.feed(completed(failed)) == [
        ToolCard(
            "image_generation", {"prompt": ""}, "", "Image generation failed: blocked by policy"
        )
    ]


def test_context_compaction_is_a_status() -> None:
    r = TurnRenderer()
    assert r.feed(completed({"id": "x1", "type": "contextCompaction"})) == [
        Status("Compacted the conversation's context")
    ]


# -- the tables ---------------------------------------------------------------------------


def test_every_codex_item_type_is_listed() -> None:
    rendered = {kind for kind, render in ITEM_RENDERERS.items() if render is not None}
    ignored = {kind for kind, render in ITEM_RENDERERS.items() if render is None}
    assert rendered == {
        "agentMessage",
        "reasoning",
        "commandExecution",
        "fileChange",
        "mcpToolCall",
        "dynamicToolCall",
        "webSearch",
        "plan",
        "imageView",
        "imageGeneration",
        "contextCompaction",
    }
    assert ignored == {
        "userMessage",
        "hookPrompt",
        "functionCallOutput",
        "collabAgentToolCall",
        "subAgentActivity",
        "sleep",
        "enteredReviewMode",
        "exitedReviewMode",
    }


@pytest.mark.parametrize(
    "kind",
    sorted([k for k, v in ITEM_RENDERERS.items() if v is None] + ["somethingNew", ""]),
)
def test_ignored_item_types_show_nothing(kind: str) -> None:
    r = TurnRenderer()
    item = {"id": "x", "type": kind, "text": "secret", "content": [{"text": "secret"}]}
    assert r.feed(started(item)) == []
    assert r.feed(completed(item)) == []


@pytest.mark.parametrize(
    "event",
    [
        TurnStarted(T),
        TokenUsageUpdated(T, TokenCounts(10, 8, 0, 2, 0), TokenCounts(10, 8, 0, 2, 0)),
        OtherEvent("turn/diff/updated", {"diff": "@@"}),
        OtherEvent("item/plan/delta", {"delta": "1."}),
        OtherEvent("warning", {"message": "careful"}),
        started({"id": "m1", "type": "agentMessage"}),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_that_show_nothing(event: object) -> None:
    assert TurnRenderer().feed(event) == []


# -- the end ------------------------------------------------------------------------------


def test_a_completed_turn_ends_with_done() -> None:
    r = TurnRenderer()
    end = TurnEnded(TurnOutcome(TurnStatus.COMPLETED))
    assert r.feed(end) == [Status("Done", done=True)]


def test_an_output_limit_ends_with_done() -> None:
    message = "Incomplete response returned, reason: max_output_tokens"
    outcome = TurnOutcome(TurnStatus.FAILED, None, message, CodexError(message))
    assert TurnRenderer().feed(TurnEnded(outcome)) == [Status("Done", done=True)]


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        (
            TurnOutcome(TurnStatus.FAILED, FailureKind.IDLE_TIMEOUT, "codex sent nothing for 5s"),
            "codex sent nothing for 5s",
        ),
        (TurnOutcome(TurnStatus.FAILED, FailureKind.CHILD_EXITED), "the turn failed"),
        (TurnOutcome(TurnStatus.INTERRUPTED), "the turn was interrupted"),
        (
            TurnOutcome(
                TurnStatus.FAILED, None, "quota", CodexError("quota", "usageLimitExceeded")
            ),
            "quota",
        ),
    ],
)
def test_a_failed_turn_ends_with_its_message(outcome: TurnOutcome, shown: str) -> None:
    assert TurnRenderer().feed(TurnEnded(outcome)) == [Status(shown, done=True)]
