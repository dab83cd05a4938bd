"""The Responses encoder, fed typed pieces: event order, sequence numbers,
items, and the whole response equal to what the stream assembles."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from bridge.protocol import TokenCounts
from http_front.errors import ApiError
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
    Usage,
)
from http_front.responses.encode import EventEncoder, ResponseHead, ResponsePresenter
from http_front.turns import Ending, FinishReason
from tests.helpers import sse_events

USAGE = Usage.of(TokenCounts(30, 20, 5, 10, 4))
ECHO: dict[str, Any] = {
    "instructions": None,
    "metadata": {},
    "reasoning": {"effort": None, "summary": None},
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "temperature": None,
    "top_p": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "truncation": "disabled",
    "user": None,
    "background": False,
    "store": True,
}
COMPLETED = Ending(FinishReason.STOP, None, USAGE)

ACTIVITY: list[Piece] = [
    Status("Thinking…"),
    Reasoning("Let me "),
    Reasoning("think."),
    Reasoning("Second part.", new_part=True),
    Text("I will run it.", new_paragraph=True),
    CommandCard("/bin/bash -lc 'echo hi'", "completed", 0, 12, "hi\n"),
    CommandCard("rm -rf /", "declined", None, None, "", declined_by="untrusted"),
    FileChangeCard(
        (("a.txt", "add", "+x\n"), ("b.txt", "delete", ""), ("c.txt", "update", "-a\n+b\n")),
        "completed",
    ),
    ToolCard("docs/search", {"q": "x"}, "found", "Called MCP tool docs/search", "found"),
    ToolCard("web_search", {"query": "trio"}, "", "Searched the web: trio"),
    ToolCard("view_image", {"path": "p.png"}, "", "Viewed image p.png"),
    PlanCard((("read", "completed"), ("write", "inProgress"), ("test", "pending")), "Why"),
    Text("Done: ", new_paragraph=True),
    Text("all good."),
    Status("Done", done=True),
]


def run(
    pieces: list[Piece], end: Ending = COMPLETED
) -> tuple[list[dict[str, Any]], ResponsePresenter]:
    presenter = ResponsePresenter(ResponseHead("resp_1", 1700000000, "m", ECHO))
    encoder = EventEncoder()
    frames = [encoder.encode_all(presenter.start())]
    for piece in pieces:
        frames.append(encoder.encode_all(presenter.present(piece)))
    frames.append(encoder.encode_all(presenter.finish(end, 1700000001)))
    raw = b"".join(frames)
    # every frame names its event as its data's type
    names = [
        line[len(b"event: ") :].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")
    ]
    events = sse_events(raw)
    assert names == [e["type"] for e in events]
    return events, presenter


def sdk_final(events: list[dict[str, Any]]) -> Any:
    """What the openai SDK's stream helper assembles from the events."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for event in events:
        parsed: Any = construct_type_unchecked(type_=ResponseStreamEvent, value=event)  # type: ignore[arg-type]
        for out in state.handle_event(parsed):
            if out.type == "response.completed":
                final = out.response
    return final


def unparsed(value: Any) -> Any:
    """``value`` without the SDK's own ``parsed`` fields."""
    if isinstance(value, dict):
        return {k: unparsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    if isinstance(value, list):
        return [unparsed(v) for v in value]
    return value


def test_event_order_and_sequence_numbers() -> None:
    events, presenter = run([Text("Hello", new_paragraph=True), Text(" world")])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[6]["text"] == "Hello world"
    final = events[-1]["response"]
    assert final == presenter.final
    assert final["status"] == "completed"
    assert final["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 30,
    }
    Response.model_validate(final)


def test_reasoning_summary_events() -> None:
    events, presenter = run(
        [Reasoning("a"), Reasoning("b"), Reasoning("c", new_part=True), Text("x")]
    )
    kinds = [e["type"] for e in events[2:9]]
    assert kinds == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_part.added",
    ]
    assert [e["summary_index"] for e in events[3:10]] == [0, 0, 0, 0, 0, 1, 1]
    reasoning = presenter.final["output"][0]
    assert reasoning["summary"] == [
        {"type": "summary_text", "text": "ab"},
        {"type": "summary_text", "text": "c"},
    ]
    assert presenter.final["output"][1]["content"][0]["text"] == "x"


def test_codex_activity_as_standard_items_the_sdk_parses() -> None:
    events, presenter = run(ACTIVITY)
    output = presenter.final["output"]
    assert [item["type"] for item in output] == [
        "reasoning",
        "message",
        "shell_call",
        "shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_call",
        "web_search_call",
        "mcp_call",
        "reasoning",
        "message",
    ]
    ran, ran_output = output[2], output[3]
    assert ran["action"]["commands"] == ["echo hi"]
    assert ran_output["call_id"] == ran["call_id"]
    assert ran_output["output"] == [
        {"stdout": "hi\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
    ]
    declined = output[5]
    assert declined["status"] == "incomplete"
    assert "declined by the approval policy (untrusted)" in declined["output"][0]["stderr"]
    assert [o["operation"]["type"] for o in output[6:12:2]] == [
        "create_file",
        "delete_file",
        "update_file",
    ]
    assert output[7]["output"] == "Created a.txt"
    assert (output[12]["server_label"], output[12]["name"], output[12]["output"]) == (
        "docs",
        "search",
        "found",
    )
    assert orjson.loads(output[12]["arguments"]) == {"q": "x"}
    assert output[13]["action"] == {"type": "search", "query": "trio"}
    assert (output[14]["server_label"], output[14]["name"]) == ("codex", "view_image")
    assert output[15]["summary"][0]["text"] == "Why\n\nPlan:\n- [x] read\n- [~] write\n- [ ] test"
    # no function calls: the client is never asked to run anything
    assert not any(item["type"] in ("function_call", "local_shell_call") for item in output)
    # the answer's text is the messages' text only
    response = Response.model_validate(presenter.final)
    assert response.output_text == "I will run it.Done: all good."
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # every item added is done at the same index
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert added == done == list(range(len(output)))


def test_whole_equals_what_the_sdk_assembles_from_the_stream() -> None:
    events, presenter = run(ACTIVITY)
    assembled = sdk_final(events)
    assert assembled is not None
    whole = Response.model_validate(presenter.final)
    assert assembled.output_text == whole.output_text
    assert [unparsed(i.to_dict()) for i in assembled.output] == [i.to_dict() for i in whole.output]
    assert assembled.usage == whole.usage


def test_failed_turn_ends_with_response_failed() -> None:
    error = ApiError(502, "The model failed.", type="server_error", code="codex_turn_failed")
    events, _ = run([Text("partial", new_paragraph=True)], Ending(FinishReason.ERROR, error, USAGE))
    assert events[-1]["type"] == "response.failed"
    final = events[-1]["response"]
    assert final["status"] == "failed"
    assert final["error"] == {"code": "codex_turn_failed", "message": "The model failed."}
    assert final["output"][0]["status"] == "incomplete"
    assert sum(e["type"].startswith("response.completed") for e in events) == 0


def test_output_limit_ends_with_response_incomplete() -> None:
    events, _ = run([Text("cut", new_paragraph=True)], Ending(FinishReason.LENGTH, None, USAGE))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("pieces", [[], [Status("Done", done=True)]])
def test_nothing_shown_is_an_empty_completed_response(pieces: list[Piece]) -> None:
    events, presenter = run(pieces)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert presenter.final["output"] == []
    assert presenter.shown == 0


def test_client_function_calls_end_a_completed_response() -> None:
    calls: list[Piece] = [
        Text("Let me check.", new_paragraph=True),
        ClientCall("call_a", "get_weather", '{"city":"Paris"}'),
        ClientCall("call_b", "get_current_timestamp", ""),
    ]
    events, presenter = run(calls, Ending(FinishReason.TOOL_CALLS, None, USAGE))
    assert presenter.calls == ["call_a", "call_b"]
    kinds = [e["type"] for e in events]
    assert kinds[-8:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",  # no arguments: no delta
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    first_added = events[kinds.index("response.output_item.added", 3)]
    assert first_added["item"]["arguments"] == ""
    assert first_added["item"]["status"] == "in_progress"
    final = presenter.final
    assert final["status"] == "completed"
    message, call_a, call_b = final["output"]
    assert message["status"] == "completed"
    assert {k: call_a[k] for k in ("type", "call_id", "name", "arguments", "status")} == {
        "type": "function_call",
        "call_id": "call_a",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    assert call_a["id"].startswith("fc_")
    assert call_a["id"] != call_b["id"]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["item_id"], e["output_index"], e["name"]) for e in done] == [
        (call_a["id"], 1, "get_weather"),
        (call_b["id"], 2, "get_current_timestamp"),
    ]
    # the SDK assembles the same calls from the stream as the whole response has
    assembled = sdk_final(events)
    whole = Response.model_validate(final)
    assert [unparsed(i.to_dict()) for i in assembled.output] == [i.to_dict() for i in whole.output]
    assert [(c.call_id, c.name, c.arguments) for c in whole.output[1:]] == [  # type: ignore[union-attr]
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_current_timestamp", ""),
    ]
