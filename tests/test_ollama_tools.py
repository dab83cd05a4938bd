"""Parsing and encoding of the client's functions on ``/api/chat``, and how
results are matched to the calls they answer."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from http_front.chat.present import ChatDelta
from http_front.errors import ApiError
from http_front.images import ImageLimits
from http_front.ollama.encode import OllamaEncoder, Stats, WholeAnswer
from http_front.ollama.request import parse_chat
from http_front.ollama.tools import (
    CallBook,
    Called,
    Returned,
    ToolReturn,
    calls_key,
    canonical,
    echoed,
    history_digest,
    results_by_id,
)
from http_front.pieces import ClientCall

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
USER = {"role": "user", "content": "Weather in Paris?"}
CALLING = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}


def chat(**body: Any) -> Any:
    return parse_chat({"model": "m", **body}, limits=ImageLimits(), client_tools=True)


def test_tools_become_dynamic_tools_and_sign_the_conversation() -> None:
    request = chat(messages=[USER], tools=[TOOL])
    assert request.turn.tools == (
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather.",
            "inputSchema": TOOL["function"]["parameters"],  # type: ignore[index]
        },
    )
    assert request.messages[0][0] == "tools"
    assert request.returned is None
    off = parse_chat({"model": "m", "messages": [USER], "tools": [TOOL]}, limits=ImageLimits())
    assert off.turn.tools == ()
    assert off.messages == (("user", USER["content"]),)


def test_results_after_the_calling_message_are_returned() -> None:
    result = {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
    request = chat(messages=[USER, CALLING, result], tools=[TOOL])
    returned = request.returned
    assert returned == ToolReturn(
        history_digest([USER]),
        (Called("get_weather", {"city": "Paris"}),),
        (Returned("sunny", "get_weather"),),
        2,
    )
    # The history shows the call; the result is the turn's text.
    assert request.messages[-2] == ("assistant", '[called get_weather {"city":"Paris"}]')
    assert request.turn.text == "[result of get_weather]\nsunny"
    # Without a calling assistant message before them, tool messages are plain history.
    assert chat(messages=[USER, {"role": "assistant", "content": "hm"}, result]).returned is None


def test_a_malformed_call_is_refused_by_the_schema() -> None:
    bad = {**CALLING, "tool_calls": [{"function": {"arguments": {}}}]}
    with pytest.raises(ApiError) as caught:
        chat(messages=[USER, bad, {"role": "tool", "content": "x"}])
    assert caught.value.status == 400


def test_keys_compare_arguments_as_json_values() -> None:
    assert canonical('{"b": 1, "a": [1, 2]}') == canonical({"a": [1, 2], "b": 1})
    history = history_digest([USER])
    assert calls_key("c", history, [("f", '{"x":1}')]) == calls_key("c", history, [("f", {"x": 1})])
    assert calls_key("c", history, [("f", {})]) != calls_key("d", history, [("f", {})])
    assert calls_key(None, history, [("f", {})]) != calls_key(None, history, [("g", {})])
    other = history_digest([{**USER, "content": "Weather in Rome?"}])
    assert calls_key(None, history, [("f", {})]) != calls_key(None, other, [("f", {})])
    # thinking is not part of what a history is recognized by
    assert history_digest([{**CALLING, "thinking": "hmm"}]) == history_digest([CALLING])


def returned(*results: Returned, calls: tuple[Called, ...] | None = None) -> ToolReturn:
    two = (Called("a", {}), Called("b", {}))
    return ToolReturn("h", two if calls is None else calls, results, 5)


def test_results_match_calls_by_id_name_or_place() -> None:
    ids = ["call_1", "call_2"]
    by_name = returned(Returned("B", "b"), Returned("A", "a"))
    assert results_by_id(by_name, ids) == {"call_1": "A", "call_2": "B"}
    by_place = returned(Returned("A"), Returned("B"))
    assert results_by_id(by_place, ids) == {"call_1": "A", "call_2": "B"}
    by_id = returned(Returned("B", call_id="call_2"), Returned("A", call_id="call_1"))
    assert results_by_id(by_id, ids) == {"call_1": "A", "call_2": "B"}
    same_name = returned(
        Returned("1", "a"), Returned("2", "a"), calls=(Called("a", 1), Called("a", 2))
    )
    assert results_by_id(same_name, ids) == {"call_1": "1", "call_2": "2"}
    with pytest.raises(ApiError) as caught:
        results_by_id(returned(Returned("C", "c")), ids)
    assert caught.value.param == "messages[5]"
    assert caught.value.code == "unknown_tool_call"


def test_echoed_ids_name_the_calls() -> None:
    assert echoed(returned(Returned("A"), Returned("B"))) is None
    calls = (Called("a", {}, "call_1"), Called("b", {}, "call_2"))
    assert echoed(returned(Returned("B", "b"), Returned("A", "a"), calls=calls)) == {
        "call_1": "A",
        "call_2": "B",
    }
    assert echoed(returned(Returned("A", call_id="x"))) == {"x": "A"}


class _Turn:
    outcome: object = None


def test_the_book_forgets_calls_of_ended_turns() -> None:
    book = CallBook()
    live, ended = _Turn(), _Turn()
    book.add("k", ["call_1"], live)  # type: ignore[arg-type]
    book.add("k", ["call_2"], ended)  # type: ignore[arg-type]
    assert book.find("k") == [("call_1",), ("call_2",)]
    ended.outcome = object()
    assert book.find("k") == [("call_1",)]
    book.drop("k", ("call_1",))
    assert book.find("k") == []
    assert len(book) == 0


def test_calls_are_encoded_as_ollama_gives_them() -> None:
    call = ClientCall("call_9", "get_weather", '{"city":"Paris"}')
    encoder = OllamaEncoder("chat", "m")
    first = encoder.chunk(ChatDelta(call=call), "t")
    second = encoder.chunk(ChatDelta(call=attrs.evolve(call, call_id="call_10")), "t")
    assert first == {
        "model": "m",
        "created_at": "t",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_9",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        "done": False,
    }
    assert second is not None
    assert second["message"]["tool_calls"][0]["function"]["index"] == 1
    whole = WholeAnswer()
    whole.add(ChatDelta(call=call))
    final = encoder.final("t", "stop", Stats(), tool_calls=whole.tool_calls)
    assert final["message"]["tool_calls"] == first["message"]["tool_calls"]
    assert final["done_reason"] == "stop"
    assert "tool_calls" not in encoder.final("t", "stop", Stats())["message"]
