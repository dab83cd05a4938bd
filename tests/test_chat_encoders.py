"""The two chat encoders — the SSE chunk stream and the whole chat.completion —
carry the same content and reasoning for the same turn, and their frames have
OpenAI's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol import (
    AgentMessageDelta,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TurnErrorEvent,
    TurnStatus,
)
from http_front.chat.present import ChatDelta, ChatOptions, ChatPresenter, ReasoningFormat
from http_front.chat.stream import DONE, ChunkEncoder, openai_usage
from http_front.chat.whole import WholeCompletion
from http_front.errors import ApiError
from http_front.pieces import ClientCall, Status, Usage
from http_front.render import TurnRenderer
from supervisor import FailureKind, TurnEnded, TurnOutcome

T = "turn-1"
ID = "chatcmpl-test"
CREATED = 1_700_000_000
MODEL = "gpt-test"
USAGE = Usage(
    prompt_tokens=11, completion_tokens=7, total_tokens=18, cached_tokens=3, reasoning_tokens=2
)


def frames(stream: bytes) -> list[bytes]:
    """The SSE frames of ``stream``: each ``data: …`` ended by a blank line."""
    assert stream.endswith(b"\n\n") or not stream
    parts = stream.split(b"\n\n")
    assert parts[-1] == b""
    return parts[:-1]


def parse(frame: bytes) -> Any:
    assert frame.startswith(b"data: "), frame
    return orjson.loads(frame[len(b"data: ") :])


def streamed(stream: bytes) -> tuple[str, str, list[dict[str, Any]]]:
    """(content, reasoning, status events) of a chunk stream."""
    content: list[str] = []
    reasoning: list[str] = []
    statuses: list[dict[str, Any]] = []
    for frame in frames(stream):
        payload = parse(frame)
        if "event" in payload:
            assert set(payload) == {"event"}
            statuses.append(payload["event"])
            continue
        assert payload["object"] == "chat.completion.chunk"
        assert (payload["id"], payload["created"], payload["model"]) == (ID, CREATED, MODEL)
        (choice,) = payload["choices"]
        assert choice["index"] == 0
        assert choice["finish_reason"] is None
        delta = choice["delta"]
        assert set(delta) <= {"content", "reasoning_content"}
        content.append(delta.get("content", ""))
        reasoning.append(delta.get("reasoning_content", ""))
    return "".join(content), "".join(reasoning), statuses


def encode_both(
    events: list[object], options: ChatOptions
) -> tuple[bytes, WholeCompletion, ChatPresenter]:
    """One turn through renderer and presenter, into both encoders."""
    renderer = TurnRenderer()
    presenter = ChatPresenter(options)
    encoder = ChunkEncoder(ID, CREATED, MODEL)
    whole = WholeCompletion()
    stream: list[bytes] = []
    for event in events:
        for piece in renderer.feed(event):
            for delta in presenter.present(piece):
                stream.append(encoder.delta(delta))
                whole.add(delta)
    return b"".join(stream), whole, presenter


def assert_same(events: list[object], options: ChatOptions) -> tuple[str, str]:
    stream, whole, presenter = encode_both(events, options)
    content, reasoning, statuses = streamed(stream)
    assert content == whole.content
    assert reasoning == whole.reasoning
    assert presenter.content() == whole.content
    assert bool(statuses) == options.status_events
    return content, reasoning


# -- fixed sequences ----------------------------------------------------------------------

COMPLETED = TurnEnded(TurnOutcome(TurnStatus.COMPLETED))

PLAIN = [
    AgentMessageDelta(T, "m1", 'Hello "quoted" \\ world'),
    AgentMessageDelta(T, "m1", " — ünïcödé 🎉\n"),
    AgentMessageDelta(T, "m2", "Second message"),
    COMPLETED,
]

REASONING_THEN_TEXT = [
    ItemStarted(T, {"id": "r1", "type": "reasoning"}),
    ReasoningDelta(T, "r1", "First ", 0),
    ReasoningDelta(T, "r1", "thought", 0),
    ReasoningDelta(T, "r1", "Second part", 1),
    ItemCompleted(T, {"id": "r1", "type": "reasoning", "summary": ["First thought", "x"]}),
    AgentMessageDelta(T, "m1", "The answer"),
    COMPLETED,
]

COMMANDS = [
    AgentMessageDelta(T, "m1", "Let me look."),
    ItemStarted(T, {"id": "c1", "type": "commandExecution", "command": "/bin/bash -lc 'ls'"}),
    OtherEvent("item/commandExecution/outputDelta", {"itemId": "c1", "delta": "a\nb\n"}),
    ItemCompleted(
        T,
        {
            "id": "c1",
            "type": "commandExecution",
            "command": "/bin/bash -lc 'ls'",
            "status": "completed",
            "exitCode": 0,
            "durationMs": 5,
        },
    ),
    OtherEvent("bridge/approval", {"itemId": "c2", "command": "rm x", "decision": "decline"}),
    ItemCompleted(
        T, {"id": "c2", "type": "commandExecution", "command": "rm x", "status": "declined"}
    ),
    OtherEvent("turn/plan/updated", {"plan": [{"step": "look", "status": "completed"}]}),
    AgentMessageDelta(T, "m2", "Two files."),
    COMPLETED,
]

FAILURE = [
    AgentMessageDelta(T, "m1", "Partial"),
    TurnErrorEvent(T, "stream disconnected", will_retry=True),
    AgentMessageDelta(T, "m2", "Partial"),
    TurnEnded(TurnOutcome(TurnStatus.FAILED, FailureKind.RETRY_TIMEOUT, "model unreachable")),
]

OPTIONS = [
    ChatOptions(reasoning=fmt, status_events=status)
    for fmt in ReasoningFormat
    for status in (False, True)
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o.reasoning}-{o.status_events}")
@pytest.mark.parametrize(
    "events",
    [PLAIN, REASONING_THEN_TEXT, COMMANDS, FAILURE],
    ids=["plain", "reasoning", "commands", "failure"],
)
def test_stream_and_whole_carry_the_same_answer(events: list[object], options: ChatOptions) -> None:
    assert_same(events, options)


def test_plain_text_exactly() -> None:
    content, reasoning = assert_same(PLAIN, ChatOptions())
    # The first message ended a line; the second is set apart by one more newline.
    assert content == 'Hello "quoted" \\ world — ünïcödé 🎉\n\nSecond message'
    assert reasoning == ""


@pytest.mark.parametrize(
    ("fmt", "content", "reasoning"),
    [
        (ReasoningFormat.FIELD, "The answer", "First thought\n\nSecond part"),
        (
            ReasoningFormat.THINK,
            "<think>\nFirst thought\n\nSecond part\n</think>\n\nThe answer",
            "",
        ),
        (ReasoningFormat.HIDDEN, "The answer", ""),
    ],
)
def test_reasoning_then_text_exactly(fmt: ReasoningFormat, content: str, reasoning: str) -> None:
    assert assert_same(REASONING_THEN_TEXT, ChatOptions(reasoning=fmt)) == (content, reasoning)


def test_commands_show_cards_between_the_texts() -> None:
    content, _ = assert_same(COMMANDS, ChatOptions())
    assert content.startswith("Let me look.\n\n<details")
    assert "<summary>Ran `ls` (exit 0, 5 ms)</summary>" in content
    assert "<summary>Declined by the approval policy (decline): `rm x`</summary>" in content
    assert "<summary>Plan: 1/1 done</summary>" in content
    assert content.endswith("</details>\n\nTwo files.")


def test_the_failure_shows_the_text_once_and_ends_with_its_status() -> None:
    stream, whole, _ = encode_both(FAILURE, ChatOptions(status_events=True))
    content, _, statuses = streamed(stream)
    assert content == whole.content == "Partial"
    assert statuses[-1] == {
        "type": "status",
        "data": {"description": "model unreachable", "done": True},
    }
    assert statuses[0]["data"] == {
        "description": "Connection to the model lost; retrying (stream disconnected)",
        "done": False,
    }


# -- random sequences ---------------------------------------------------------------------

_TEXT = st.text(max_size=12)
_ITEM = st.sampled_from(["a", "b", "c"])


def _agent() -> st.SearchStrategy[list[object]]:
    return st.builds(lambda i, t: [AgentMessageDelta(T, "m" + i, t)], _ITEM, _TEXT)


def _reasoning() -> st.SearchStrategy[list[object]]:
    return st.builds(
        lambda i, n, t, raw: [ReasoningDelta(T, "r" + i, t, n, raw)],
        _ITEM,
        st.integers(0, 2),
        _TEXT,
        st.booleans(),
    )


def _command() -> st.SearchStrategy[list[object]]:
    def build(i: str, command: str, output: str, code: int | None) -> list[object]:
        item: dict[str, Any] = {"id": "c" + i, "type": "commandExecution", "command": command}
        return [
            ItemStarted(T, item),
            OtherEvent("item/commandExecution/outputDelta", {"itemId": "c" + i, "delta": output}),
            ItemCompleted(T, {**item, "exitCode": code, "status": "completed"}),
        ]

    return st.builds(build, _ITEM, _TEXT, _TEXT, st.none() | st.integers(0, 2))


def _tool() -> st.SearchStrategy[list[object]]:
    def build(kind: str, text: str) -> list[object]:
        items: dict[str, dict[str, Any]] = {
            "mcp": {"type": "mcpToolCall", "server": "s", "tool": text, "arguments": {"q": text}},
            "web": {"type": "webSearch", "query": text},
            "plan": {"type": "plan", "text": text},
            "image": {"type": "imageView", "path": text},
            "whole": {"type": "agentMessage", "text": text},
            "summary": {"type": "reasoning", "summary": [text]},
        }
        return [ItemCompleted(T, {"id": kind + text, **items[kind]})]

    kinds = st.sampled_from(["mcp", "web", "plan", "image", "whole", "summary"])
    return st.builds(build, kinds, _TEXT)


def _other() -> st.SearchStrategy[list[object]]:
    return st.sampled_from(
        [
            [TurnErrorEvent(T, "lost", will_retry=True)],
            [OtherEvent("turn/plan/updated", {"plan": [{"step": "x", "status": "pending"}]})],
            [ItemStarted(T, {"id": "r", "type": "reasoning"})],
        ]
    )


_ENDS = st.sampled_from(
    [
        COMPLETED,
        TurnEnded(TurnOutcome(TurnStatus.INTERRUPTED)),
        TurnEnded(TurnOutcome(TurnStatus.FAILED, FailureKind.CHILD_EXITED, "codex exited")),
    ]
)

_TURNS = st.builds(
    lambda steps, end: [event for step in steps for event in step] + [end],
    st.lists(st.one_of(_agent(), _reasoning(), _command(), _tool(), _other()), max_size=25),
    _ENDS,
)


@settings(max_examples=300, deadline=None)
@given(
    events=_TURNS,
    fmt=st.sampled_from(list(ReasoningFormat)),
    status_events=st.booleans(),
)
def test_random_turns_stream_and_whole_agree(
    events: list[object], fmt: ReasoningFormat, status_events: bool
) -> None:
    stream, whole, presenter = encode_both(
        events, ChatOptions(reasoning=fmt, status_events=status_events)
    )
    content, reasoning, statuses = streamed(stream)
    assert content == whole.content == presenter.content()
    assert reasoning == whole.reasoning
    if fmt is not ReasoningFormat.FIELD:
        assert reasoning == ""
    if fmt is ReasoningFormat.THINK:
        # Every <think> the bridge opened is closed by the end of the turn.
        assert content.count("<think>\n") == content.count("\n</think>\n\n")
    if status_events:
        assert statuses[-1]["data"]["done"] is True
    else:
        assert statuses == []


# -- frame shapes -------------------------------------------------------------------------


def head() -> dict[str, Any]:
    return {"id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}


def test_role_frame() -> None:
    frame = ChunkEncoder(ID, CREATED, MODEL).role()
    assert frames(frame) == [frame[:-2]]
    assert parse(frame[:-2]) == {
        **head(),
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ],
    }


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (ChatDelta(content='a "b"\n'), {"content": 'a "b"\n'}),
        (ChatDelta(reasoning="why"), {"reasoning_content": "why"}),
        (ChatDelta(content="c", reasoning="r"), {"reasoning_content": "r", "content": "c"}),
    ],
)
def test_delta_frames(delta: ChatDelta, expected: dict[str, str]) -> None:
    frame = ChunkEncoder(ID, CREATED, MODEL).delta(delta)
    (only,) = frames(frame)
    assert parse(only) == {
        **head(),
        "choices": [{"index": 0, "delta": expected, "finish_reason": None}],
    }


def test_status_frame() -> None:
    frame = ChunkEncoder(ID, CREATED, MODEL).delta(ChatDelta(status=Status("Done", done=True)))
    assert (
        frame == b'data: {"event":{"type":"status","data":{"description":"Done","done":true}}}\n\n'
    )


@pytest.mark.parametrize("reason", ["stop", "length", "error"])
def test_finish_frame(reason: str) -> None:
    (only,) = frames(ChunkEncoder(ID, CREATED, MODEL).finish(reason))
    assert parse(only) == {
        **head(),
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
    }


def test_usage_frame() -> None:
    (only,) = frames(ChunkEncoder(ID, CREATED, MODEL).usage(USAGE))
    assert parse(only) == {
        **head(),
        "choices": [],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


def test_error_frame() -> None:
    failure = ApiError(504, "codex sent nothing", type="server_error", code="timeout")
    (only,) = frames(ChunkEncoder(ID, CREATED, MODEL).error(failure))
    assert parse(only) == {
        **head(),
        "choices": [],
        "error": {
            "message": "codex sent nothing",
            "type": "server_error",
            "param": None,
            "code": "timeout",
        },
    }


def test_done_frame() -> None:
    assert DONE == b"data: [DONE]\n\n"


# -- the whole completion -----------------------------------------------------------------


def test_whole_body_without_reasoning() -> None:
    whole = WholeCompletion()
    whole.add(ChatDelta(content="Hel"))
    whole.add(ChatDelta(status=Status("Running")))
    whole.add(ChatDelta(content="lo"))
    assert (whole.content, whole.reasoning) == ("Hello", "")
    assert whole.body(ID, CREATED, MODEL, "stop", USAGE) == {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": openai_usage(USAGE),
    }


def test_whole_body_with_reasoning() -> None:
    whole = WholeCompletion()
    whole.add(ChatDelta(reasoning="think"))
    whole.add(ChatDelta(content="answer", reasoning="ing"))
    body = whole.body(ID, CREATED, MODEL, "length", USAGE)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "answer",
                "reasoning_content": "thinking",
            },
            "finish_reason": "length",
        }
    ]


def test_an_empty_whole_completion() -> None:
    body = WholeCompletion().body(ID, CREATED, MODEL, "stop", USAGE)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}


def test_client_calls_stream_as_tool_calls_and_whole_as_a_message() -> None:
    calls = [ClientCall("call_a", "get_time", "{}"), ClientCall("call_b", "lookup", '{"q":1}')]
    presenter = ChatPresenter()
    deltas = [delta for call in calls for delta in presenter.present(call)]
    assert presenter.calls == calls
    encoder = ChunkEncoder("chatcmpl-1", 0, "m")
    chunks = [orjson.loads(f[len(b"data: ") :]) for d in deltas for f in frames(encoder.delta(d))]
    parts = [c["choices"][0]["delta"]["tool_calls"] for c in chunks]
    assert parts == [
        [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_time", "arguments": ""},
            }
        ],
        [{"index": 0, "function": {"arguments": "{}"}}],
        [
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "lookup", "arguments": ""},
            }
        ],
        [{"index": 1, "function": {"arguments": '{"q":1}'}}],
    ]
    assert (
        orjson.loads(encoder.finish("tool_calls")[6:])["choices"][0]["finish_reason"]
        == "tool_calls"
    )
    whole = WholeCompletion()
    for delta in deltas:
        whole.add(delta)
    usage = Usage(1, 1, 2, 0, 0)
    message = whole.body("chatcmpl-1", 0, "m", "tool_calls", usage)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q":1}'},
            },
        ],
    }
