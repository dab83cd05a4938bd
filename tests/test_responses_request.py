"""Parsing ``POST /v1/responses`` bodies: every field, every refusal with its param."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from http_front.errors import ApiError
from http_front.images import ImageLimits
from http_front.responses.request import IGNORED, OWN_OUTPUT_TYPES, parse_responses_request
from http_front.structured import JSON_MODE_NOTE

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
LIMITS = ImageLimits()


def parse(limits: ImageLimits = LIMITS, **body: Any) -> Any:
    body.setdefault("input", "hello")
    return parse_responses_request(body, limits)


def refused(param: str | None, status: int = 400, **body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**body)
    assert caught.value.status == status, caught.value.message
    assert caught.value.param == param, caught.value.message
    return caught.value


def test_a_string_input_is_the_turn() -> None:
    request = parse(input="What is 2+2?", model="m", instructions="Be brief.")
    assert request.turn.text == "What is 2+2?"
    assert request.turn.developer_instructions == "Be brief."
    assert request.turn.history == ()
    assert request.model == "m"
    assert (request.stream, request.store) == (False, True)
    assert request.items == (
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What is 2+2?"}],
        },
    )


def test_items_become_instructions_history_and_input() -> None:
    request = parse(
        instructions="Be brief.",
        input=[
            {"role": "system", "content": "System rule."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
            {"role": "developer", "content": "Dev rule."},
            {"role": "user", "content": "three"},
            {"role": "user", "content": [{"type": "input_text", "text": "four"}]},
        ],
    )
    assert request.turn.text == "three\n\nfour"
    assert request.turn.developer_instructions == "Be brief.\n\nSystem rule.\n\nDev rule."
    assert request.turn.history == (
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "two"}],
        },
    )
    assert len(request.items) == 4  # history and the two new messages, no instructions


def test_own_output_items_sent_back_are_accepted_and_not_replayed() -> None:
    items: list[dict[str, Any]] = [{"type": kind, "id": "x"} for kind in sorted(OWN_OUTPUT_TYPES)]
    request = parse(input=[*items, {"role": "user", "content": "next"}])
    assert request.turn.text == "next"
    assert request.turn.history == ()


def test_images_go_with_the_turn_and_history() -> None:
    image = {"type": "input_image", "image_url": PNG_URL, "detail": "auto"}
    request = parse(
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "old"}, image]},
            {"role": "assistant", "content": "seen"},
            {"role": "user", "content": [{"type": "input_text", "text": "new"}, image]},
        ]
    )
    assert [i.data for i in request.images] == [PNG]
    assert request.turn.history[0]["content"][1] == {"type": "input_image", "image_url": PNG_URL}
    assert request.turn.text == "new"


def test_image_refusals() -> None:
    refused(
        "input[0].content[0].image_url",
        input=[
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}
        ],
    )
    refused(
        "input[0].content[0].image_url",
        input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
    )
    refused(
        "input[0].content[0].image_url",
        input=[
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": "data:image/png;base64,aGVsbG8="}],
            }
        ],
    )
    with pytest.raises(ApiError) as caught:
        parse(
            ImageLimits(max_bytes=8),
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL}]}],
        )
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")
    with pytest.raises(ApiError) as caught:
        parse(
            ImageLimits(max_count=1),
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": PNG_URL},
                        {"type": "input_image", "image_url": PNG_URL},
                    ],
                }
            ],
        )
    assert caught.value.code == "too_many_images"
    refused(
        "input[0].content[0].type",
        input=[
            {"role": "assistant", "content": [{"type": "input_image", "image_url": PNG_URL}]},
            {"role": "user", "content": "x"},
        ],
    )


def test_reasoning_and_stream_and_store() -> None:
    request = parse(reasoning={"effort": "high", "summary": "detailed"}, stream=True, store=False)
    assert (request.turn.effort, request.turn.summary) == ("high", "detailed")
    assert (request.stream, request.store) == (True, False)
    assert request.echo["reasoning"] == {"effort": "high", "summary": "detailed"}
    defaults = parse_responses_request({"input": "x"}, LIMITS, default_effort="low", summary=None)
    assert (defaults.turn.effort, defaults.turn.summary) == ("low", None)
    refused("reasoning.effort", reasoning={"effort": "max"})
    refused("reasoning.summary", reasoning={"summary": "verbose"})


def test_text_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    request = parse(text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert request.turn.output_schema == schema
    assert request.echo["text"]["format"]["type"] == "json_schema"
    json_mode = parse(text={"format": {"type": "json_object"}})
    assert json_mode.turn.text.endswith(JSON_MODE_NOTE)
    assert json_mode.turn.output_schema is None
    plain = parse(text={"format": {"type": "text"}})
    assert plain.turn.text == "hello"
    refused("text.format.schema", text={"format": {"type": "json_schema", "name": "x"}})
    refused("text.format.name", text={"format": {"type": "json_schema", "schema": schema}})
    refused("text.format.type", text={"format": {"type": "xml"}})


def test_metadata_and_previous_response_id() -> None:
    request = parse(metadata={"k": "v"}, previous_response_id="resp_1")
    assert request.echo["metadata"] == {"k": "v"}
    assert request.previous_response_id == "resp_1"
    refused("metadata.k", metadata={"k": 1})
    refused("previous_response_id", previous_response_id=5)


@pytest.mark.parametrize("field", sorted(IGNORED))
def test_ignored_fields_are_accepted(field: str) -> None:
    values: dict[str, Any] = {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_logprobs": 2,
        "max_output_tokens": 100,
        "max_tool_calls": 3,
        "parallel_tool_calls": False,
        "truncation": "auto",
        "include": ["reasoning.encrypted_content"],
        "stream_options": {"include_obfuscation": False},
    }
    request = parse(**{field: values.get(field, "some-value")})
    assert request.turn.text == "hello"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "only function tools"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "Missing required"),
        ({"tools": [{"name": "f"}]}, "tools[0].type", "required"),
        ({"tool_choice": "required"}, "tool_choice", "cannot make the model call"),
        (
            {"tool_choice": {"type": "function", "name": "f"}},
            "tool_choice",
            "cannot make the model call",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice", None),
        ({"background": True}, "background", "not supported"),
        ({"prompt": {"id": "p"}}, "prompt", "not supported"),
        ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"bogus": 1}, "bogus", "Unknown parameter"),
        (
            {"input": [{"type": "function_call_output", "output": "o"}]},
            "input[0].call_id",
            "Missing required",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c"}]},
            "input[0].output",
            "Missing required",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": PNG_URL}],
                    }
                ]
            },
            "input[0].output[0].type",
            "send text",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
            "input[0].arguments",
            "Missing required",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "not supported"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "one of"),
        ({"input": [{"type": "message", "content": "x"}]}, "input[0].role", "required"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "not supported",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
            "required",
        ),
        ({"input": [{"role": "assistant", "content": "x"}]}, "input", "end with a user message"),
        ({"input": "   "}, "input", "must not be empty"),
        ({"input": []}, "input", None),
        ({"input": 5}, "input", None),
        ({"model": ""}, "model", None),
        ({"stream": "yes"}, "stream", "boolean"),
        ({"store": 1}, "store", "boolean"),
        ({"instructions": 3}, "instructions", "string"),
        ({"max_output_tokens": 0}, "max_output_tokens", None),
        ({"temperature": 3}, "temperature", None),
    ],
)
def test_refusals_name_their_param(body: dict[str, Any], param: str, words: str | None) -> None:
    error = refused(param, **body)
    if words is not None:
        assert words in error.message


def test_missing_input_and_non_object_bodies() -> None:
    with pytest.raises(ApiError) as caught:
        parse_responses_request({"model": "m"}, LIMITS)
    assert caught.value.param == "input"
    with pytest.raises(ApiError) as caught:
        parse_responses_request([1], LIMITS)
    assert caught.value.status == 400


def test_over_long_input_is_refused() -> None:
    from http_front.turn_input import MAX_TURN_INPUT_CHARS

    error = refused("input", input="x" * (MAX_TURN_INPUT_CHARS + 1))
    assert error.code == "string_above_max_length"


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def with_tools(**body: Any) -> Any:
    body.setdefault("input", "hello")
    return parse_responses_request(body, LIMITS, client_tools=True)


def test_function_tools_become_codex_dynamic_tools() -> None:
    bare = {"type": "function", "name": "now"}
    request = with_tools(tools=[WEATHER, bare])
    assert request.turn.tools == (
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather.",
            "inputSchema": WEATHER["parameters"],
        },
        {
            "type": "function",
            "name": "now",
            "description": "",
            "inputSchema": {"type": "object", "properties": {}},
        },
    )
    assert request.echo["tools"][0] == WEATHER
    assert request.echo["tools"][1]["strict"] is None
    assert request.echo["tool_choice"] == "auto"
    assert request.tool_results == {}


def test_tool_choice_none_offers_no_function() -> None:
    request = with_tools(tools=[WEATHER], tool_choice="none")
    assert request.turn.tools == ()
    assert request.echo["tools"] == [WEATHER]
    assert request.echo["tool_choice"] == "none"


def test_without_client_tools_functions_are_only_echoed() -> None:
    request = parse(tools=[WEATHER])
    assert request.turn.tools == ()
    assert request.echo["tools"] == [WEATHER]


CALLS: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather?"},
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    },
    {"type": "function_call", "call_id": "call_2", "name": "now", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    {
        "type": "function_call_output",
        "call_id": "call_2",
        "output": [{"type": "input_text", "text": "12:00"}],
    },
]


def test_results_the_input_ends_with_resume_a_turn() -> None:
    request = with_tools(input=CALLS, tools=[WEATHER])
    assert request.tool_results == {"call_1": "sunny", "call_2": "12:00"}
    # stored for the chain as text, the way chat replays calls and results
    assert [(item["role"], item["content"][0]["text"]) for item in request.items] == [
        ("user", "Weather?"),
        ("assistant", '[called get_weather {"city":"Paris"}]'),
        ("assistant", "[called now {}]"),
        ("user", "[result of get_weather]\nsunny"),
        ("user", "[result of now]\n12:00"),
    ]
    only_outputs = with_tools(input=CALLS[-2:], previous_response_id="resp_1")
    assert only_outputs.tool_results == {"call_1": "sunny", "call_2": "12:00"}
    assert only_outputs.items[0]["content"][0]["text"] == "[result of call_1]\nsunny"


def test_earlier_results_are_history() -> None:
    request = with_tools(input=[*CALLS, {"role": "user", "content": "And tomorrow?"}])
    assert request.tool_results == {}
    assert request.turn.text == "And tomorrow?"
    texts = [item["content"][0]["text"] for item in request.turn.history]
    assert texts[1:] == [
        '[called get_weather {"city":"Paris"}]',
        "[called now {}]",
        "[result of get_weather]\nsunny",
        "[result of now]\n12:00",
    ]


def test_without_client_tools_results_are_the_turn_text() -> None:
    request = parse(input=CALLS)
    assert request.tool_results == {}
    assert request.turn.text == "[result of get_weather]\nsunny\n\n[result of now]\n12:00"


def test_a_second_output_for_one_call_is_refused() -> None:
    with pytest.raises(ApiError) as caught:
        with_tools(input=[*CALLS, CALLS[-1]])
    assert caught.value.param == "input[6].call_id"
