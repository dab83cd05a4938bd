"""The chat-completions request parser, fed bodies directly: every rejection is a
400 naming its ``param``, and what is accepted becomes the right codex turn."""

from __future__ import annotations

from typing import Any

import pytest

from http_front.chat.request import (
    REASONING_EFFORTS,
    ChatRequest,
    parse_body,
    parse_chat_request,
)
from http_front.errors import ApiError
from http_front.turn_input import MAX_TURN_INPUT_CHARS
from supervisor import TurnRequest


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": list(messages), **fields}


def parse(data: dict[str, Any], **options: Any) -> ChatRequest:
    return parse_chat_request(data, **options)


def rejected(data: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(data)
    error = caught.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.message
    return error


def user_item(text: str) -> dict[str, object]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant_item(text: str) -> dict[str, object]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


# -- parse_body ---------------------------------------------------------------------------


def test_parse_body_gives_the_object() -> None:
    assert parse_body(b'{"model": "m", "messages": []}') == {"model": "m", "messages": []}


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe"])
def test_parse_body_refuses_what_is_not_json(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        parse_body(raw)
    assert caught.value.status == 400
    assert caught.value.message.startswith("the request body is not valid JSON")
    assert caught.value.param is None


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null"])
def test_parse_body_refuses_what_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        parse_body(raw)
    assert caught.value.status == 400
    assert caught.value.message == "the request body must be a JSON object"


# -- what an accepted request becomes ------------------------------------------------------


def test_the_simplest_request() -> None:
    chat = parse(body(user("Hello")))
    assert chat == ChatRequest(
        model="gpt-test",
        stream=False,
        include_usage=False,
        messages=(("user", "Hello"),),
        message_images=((),),
        turn=TurnRequest(text="Hello", model="gpt-test", summary="auto"),
    )


def test_model_is_optional() -> None:
    chat = parse({"messages": [user("hi")]})
    assert chat.model is None
    assert chat.turn.model is None


def test_content_as_a_list_of_text_parts() -> None:
    parts = [
        {"type": "text", "text": "one"},
        {"type": "input_text", "text": "two"},
        {"type": "refusal", "refusal": "ignored"},
        {"type": "output_text", "text": "three"},
    ]
    chat = parse(body(user(parts)))
    assert chat.turn.text == "one\n\ntwo\n\nthree"
    assert chat.messages == (("user", "one\n\ntwo\n\nthree"),)


def test_unknown_fields_and_sampling_fields_are_accepted_and_ignored() -> None:
    chat = parse(
        body(
            user("hi"),
            temperature=0.2,
            top_p=1,
            presence_penalty=0,
            frequency_penalty=0.5,
            max_tokens=100,
            max_completion_tokens=200,
            seed=7,
            n=1,
            logit_bias={"1": 2},
            response_format={"type": "text"},
            something_new={"nested": [1, 2]},
            user="end-user-1",
            metadata={"conversation_id": "c1", "other": 3},
            tools=[],
        )
    )
    assert chat.turn == TurnRequest(text="hi", model="gpt-test", summary="auto")


def test_stream_and_include_usage() -> None:
    assert parse(body(user("hi"), stream=True)).stream is True
    assert parse(body(user("hi"), stream=None)).stream is False
    with_usage = parse(body(user("hi"), stream=True, stream_options={"include_usage": True}))
    assert with_usage.include_usage is True
    assert parse(body(user("hi"), stream_options={})).include_usage is False
    assert parse(body(user("hi"), stream_options={"include_usage": None})).include_usage is False
    assert parse(body(user("hi"), stream_options=None)).include_usage is False


def test_system_and_developer_messages_become_developer_instructions() -> None:
    chat = parse(
        body(
            {"role": "system", "content": "Be brief."},
            user("first"),
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "system", "content": ""},
            assistant("answer"),
            user("second"),
        )
    )
    assert chat.turn.developer_instructions == "Be brief.\n\nUse French."
    assert chat.turn.text == "second"
    assert chat.turn.history == (user_item("first"), assistant_item("answer"))
    assert chat.messages == (
        ("system", "Be brief."),
        ("system", "Use French."),
        ("user", "first"),
        ("assistant", "answer"),
        ("user", "second"),
    )


def test_no_system_message_means_no_instructions() -> None:
    assert parse(body(user("hi"))).turn.developer_instructions is None


def test_history_strips_bridge_markup_and_drops_empty_messages() -> None:
    card = (
        '<details type="tool_calls" done="true" name="shell" arguments="{}" result="{}">\n'
        "<summary>Ran `ls`</summary>\n</details>\n\n"
    )
    chat = parse(
        body(
            user("look"),
            assistant("<think>\nhmm\n</think>\n\n" + card + "Two files."),
            assistant(None),
            user("thanks"),
        )
    )
    assert chat.turn.history == (user_item("look"), assistant_item("Two files."))
    assert chat.messages[1] == ("assistant", "Two files.")
    assert chat.messages[2] == ("assistant", "")


def test_tool_results_are_user_messages_naming_the_tool() -> None:
    chat = parse(
        body(
            user("q"),
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "function", "content": "ok", "name": "lookup"},
            {"role": "tool", "content": "x"},
            user("next"),
        )
    )
    assert chat.turn.history == (
        user_item("q"),
        user_item("[result of call_1]\n42"),
        user_item("[result of lookup]\nok"),
        user_item("[result of tool]\nx"),
    )


def test_several_user_messages_in_a_row() -> None:
    chat = parse(body(user("a"), user("b")))
    assert chat.turn.text == "b"
    assert chat.turn.history == (user_item("a"),)


def test_reasoning_effort_from_the_request_or_the_default() -> None:
    assert parse(body(user("hi"), reasoning_effort="high")).turn.effort == "high"
    assert parse(body(user("hi")), default_effort="low").turn.effort == "low"
    assert parse(body(user("hi"), reasoning_effort="high"), default_effort="low").turn.effort == (
        "high"
    )
    assert parse(body(user("hi"))).turn.effort is None


@pytest.mark.parametrize("effort", sorted(REASONING_EFFORTS))
def test_every_reasoning_effort_is_accepted(effort: str) -> None:
    assert parse(body(user("hi"), reasoning_effort=effort)).turn.effort == effort


def test_the_reasoning_efforts() -> None:
    assert {"none", "minimal", "low", "medium", "high", "xhigh"} == REASONING_EFFORTS


def test_the_summary_option_is_passed_on() -> None:
    assert parse(body(user("hi")), summary=None).turn.summary is None
    assert parse(body(user("hi")), summary="detailed").turn.summary == "detailed"


def test_a_prompt_of_exactly_the_limit_is_accepted() -> None:
    chat = parse(body(user("é" * MAX_TURN_INPUT_CHARS)))
    assert len(chat.turn.text) == MAX_TURN_INPUT_CHARS


def test_long_history_has_no_limit() -> None:
    chat = parse(body(user("x" * (MAX_TURN_INPUT_CHARS + 1)), assistant("ok"), user("short")))
    assert chat.turn.text == "short"
    assert len(chat.turn.history) == 2


# -- rejections ---------------------------------------------------------------------------


def test_a_prompt_over_the_limit_names_it() -> None:
    error = rejected(body(user("earlier"), assistant("ok"), user("é" * (MAX_TURN_INPUT_CHARS + 1))))
    assert error.param == "messages[2].content"
    assert error.code == "string_above_max_length"
    assert str(MAX_TURN_INPUT_CHARS) in error.message
    assert str(MAX_TURN_INPUT_CHARS + 1) in error.message


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"messages": None}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": {"role": "user"}}, "messages"),
        ({"messages": []}, "messages"),
        (body(user("hi"), model=""), "model"),
        (body(user("hi"), model="   "), "model"),
        (body(user("hi"), model=3), "model"),
        (body(user("hi"), stream="yes"), "stream"),
        (body(user("hi"), stream=1), "stream"),
        (body(user("hi"), stream_options=True), "stream_options"),
        (body(user("hi"), stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (body(user("hi"), reasoning_effort="extreme"), "reasoning_effort"),
        (body(user("hi"), reasoning_effort="HIGH"), "reasoning_effort"),
        (body(user("hi"), reasoning_effort=["high"]), "reasoning_effort"),
        (body(user("hi"), reasoning_effort=3), "reasoning_effort"),
        (body(user("hi"), temperature="hot"), "temperature"),
        (body(user("hi"), temperature=True), "temperature"),
        (body(user("hi"), max_tokens=[1]), "max_tokens"),
        (body(user("hi"), seed="1"), "seed"),
        (body(user("hi"), n=0), "n"),
        (body(user("hi"), n=2), "n"),
        (body(user("hi"), n=True), "n"),
        (body(user("hi"), user=42), "user"),
        (body(user("hi"), metadata=["conversation_id"]), "metadata"),
        (body(user("hi"), metadata={"conversation_id": 7}), "metadata.conversation_id"),
        (body(user("hi"), tools={"type": "function"}), "tools"),
        (body("hi"), "messages[0]"),  # type: ignore[arg-type]
        (body({"content": "hi"}), "messages[0].role"),
        (body({"role": "robot", "content": "hi"}), "messages[0].role"),
        (body({"role": 1, "content": "hi"}), "messages[0].role"),
        (body(user(42)), "messages[0].content"),
        (body(user({"type": "text", "text": "hi"})), "messages[0].content"),
        (body(user(["hi"])), "messages[0].content[0]"),
        (body(user([{"text": "hi"}])), "messages[0].content[0].type"),
        (body(user([{"type": ["text"], "text": "hi"}])), "messages[0].content[0].type"),
        (body(user([{"type": "text", "text": 1}])), "messages[0].content[0].text"),
        (
            body(user([{"type": "image_url", "image_url": {}}])),
            "messages[0].content[0].image_url.url",
        ),
        (body(user([{"type": "image_url"}])), "messages[0].content[0].image_url"),
        (body(user([{"type": "input_audio", "input_audio": {}}])), "messages[0].content[0].type"),
        (
            body(user("a"), assistant([{"type": "text"}]), user("b")),
            "messages[1].content[0].text",
        ),
        (
            body({"role": "tool", "content": "out", "name": {"n": 1}}, user("hi")),
            "messages[0].name",
        ),
        (
            body({"role": "tool", "content": "out", "tool_call_id": ["c"]}, user("hi")),
            "messages[0].tool_call_id",
        ),
        (body(user("hi"), assistant("answer")), "messages"),
        (body({"role": "system", "content": "only instructions"}), "messages"),
        (body(user("hi"), {"role": "system", "content": "after"}, assistant("x")), "messages"),
        (body(user("")), "messages[0].content"),
        (body(user("  \n\t ")), "messages[0].content"),
        (body(user(None)), "messages[0].content"),
        (body(user([])), "messages[0].content"),
        (body(user("a"), assistant("b"), user([{"type": "refusal"}])), "messages[2].content"),
    ],
)
def test_rejections_name_their_param(data: dict[str, Any], param: str) -> None:
    error = rejected(data)
    assert error.param == param
    assert error.code is None


def test_the_last_message_check_names_its_rule() -> None:
    error = rejected(body(user("hi"), assistant("answer")))
    assert error.message == "the last non-system message must come from the user"


def test_an_unsupported_part_says_what_to_send() -> None:
    error = rejected(body(user([{"type": "input_audio", "input_audio": {}}])))
    assert error.message == (
        "messages[0].content[0].type must be one of text, input_text, output_text, refusal, "
        "image_url"
    )


def test_n_of_one_is_one_however_written() -> None:
    # JSON Schema: 1.0 is the integer 1.
    assert parse(body(user("hi"), n=1.0)).turn.text == "hi"


def test_n_above_one_says_why() -> None:
    error = rejected(body(user("hi"), n=3))
    assert "codex produces one answer per turn" in error.message


def test_a_system_message_after_the_last_user_one_is_fine() -> None:
    chat = parse(body(user("hi"), {"role": "system", "content": "late"}))
    assert chat.turn.text == "hi"
    assert chat.turn.developer_instructions == "late"
