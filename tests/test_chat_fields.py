"""Chat-completions request fields beyond plain text: images, response_format,
stop, and the fields refused or ignored — fed to the parser directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from fixtures.images import data_url, png
from http_front.chat.request import CHAT_BODY, FUNCTION_CALLING, ChatRequest, parse_chat_request
from http_front.conversation.identity import RequestKind, signature
from http_front.conversation.manager import Candidate, Plan
from http_front.errors import ApiError
from http_front.images import ImageLimits, input_image
from http_front.structured import JSON_MODE_NOTE
from http_front.turns import _prepared

RED, BLUE = png(rgb=(255, 0, 0)), png(rgb=(0, 0, 255))


def image_part(data: bytes, *, string_form: bool = False) -> dict[str, Any]:
    url = data_url(data)
    return {"type": "image_url", "image_url": url if string_form else {"url": url}}


def user(*parts: Any) -> dict[str, Any]:
    return {
        "role": "user",
        "content": list(parts) if len(parts) != 1 or not isinstance(parts[0], str) else parts[0],
    }


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": list(messages), **fields}


def parse(data: dict[str, Any], limits: ImageLimits | None = None) -> ChatRequest:
    return parse_chat_request(data, images=limits)


def refused(data: dict[str, Any], limits: ImageLimits | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(data, limits)
    return caught.value


# -- images ---------------------------------------------------------------------------------


def test_the_last_messages_images_go_with_the_turn() -> None:
    chat = parse(
        body(user(text("What is this?"), image_part(RED), image_part(BLUE, string_form=True)))
    )
    assert chat.turn.text == "What is this?"
    assert [image.data for image in chat.images] == [RED, BLUE]
    assert {image.media_type for image in chat.images} == {"image/png"}


def test_an_image_alone_is_a_message() -> None:
    chat = parse(body(user(image_part(RED))))
    assert chat.turn.text == ""
    assert len(chat.images) == 1


def test_earlier_images_are_replayed_as_input_image_parts() -> None:
    chat = parse(
        body(
            user(text("look"), image_part(RED)),
            {"role": "assistant", "content": "a red square"},
            user("and now?"),
        )
    )
    assert chat.images == ()
    (first, _) = chat.turn.history
    assert first["content"] == [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": data_url(RED)},
    ]
    assert first["content"][1] == input_image(parse(body(user(image_part(RED)))).images[0])


def test_the_same_text_with_another_image_is_another_message() -> None:
    red = parse(body(user(text("What is this?"), image_part(RED))))
    blue = parse(body(user(text("What is this?"), image_part(BLUE))))
    plain = parse(body(user("What is this?")))
    signatures = {
        signature(*chat.messages[-1], chat.message_images[-1]) for chat in (red, blue, plain)
    }
    assert len(signatures) == 3
    # ... and the model reads the text only: the digest is for the signature.
    assert red.messages == blue.messages == plain.messages == (("user", "What is this?"),)


def _contents(paths: tuple[str, ...]) -> list[bytes]:
    return [Path(path).read_bytes() for path in paths]


async def test_each_turn_gets_the_images_and_json_note_of_the_messages_it_sends(
    tmp_path: Path,
) -> None:
    chat = parse(
        body(
            user(text("a"), image_part(RED)),
            user(text("b"), image_part(BLUE)),
            response_format={"type": "json_object"},
        )
    )
    cwd = str(tmp_path)
    on_thread = attrs.evolve(chat.turn, text="a\n\nb", thread_id="thread-1", cwd=cwd)
    fresh = attrs.evolve(chat.turn, cwd=cwd)
    plan = Plan(RequestKind.CONVERSATION, (Candidate(on_thread, 0), Candidate(fresh, 1)))
    sent, seeded = (await _prepared(plan, chat)).requests
    assert _contents(sent.local_images) == [RED, BLUE]
    assert sent.text == f"a\n\nb\n\n{JSON_MODE_NOTE}"
    # A fresh thread has the first message (and its image) in its history.
    assert _contents(seeded.local_images) == [BLUE]
    assert seeded.text == f"b\n\n{JSON_MODE_NOTE}"
    assert input_image(chat.message_images[0][0]) in seeded.history[0]["content"]  # type: ignore[operator]


def test_images_only_in_user_messages() -> None:
    error = refused(body(user("a"), {"role": "assistant", "content": [image_part(RED)]}, user("b")))
    assert error.status == 400
    assert error.param == "messages[1].content[0]"
    assert "user messages only" in error.message


def test_an_image_over_the_size_limit_is_413() -> None:
    error = refused(body(user(image_part(RED))), ImageLimits(max_bytes=len(RED) - 1))
    assert error.status == 413
    assert error.code == "image_too_large"
    assert error.param == "messages[0].content[0].image_url.url"
    assert str(len(RED) - 1) in error.message


def test_too_many_images_across_messages() -> None:
    error = refused(
        body(user(image_part(RED)), user(image_part(RED), image_part(BLUE))),
        ImageLimits(max_count=2),
    )
    assert (error.status, error.code, error.param) == (
        400,
        "too_many_images",
        "messages[1].content",
    )
    assert "at most 2" in error.message


def test_what_is_not_an_image_is_refused() -> None:
    error = refused(body(user(image_part(b"GIF-but-not-really"))))
    assert (error.status, error.code) == (400, "invalid_image_format")


def test_remote_urls_only_when_allowed() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
    error = refused(body(user(part)))
    assert (error.status, error.code) == (400, "image_url_not_allowed")
    assert "data URL" in error.message
    chat = parse(body(user(part)), ImageLimits(allow_urls=True))
    assert chat.images[0].url == "https://example.com/a.png"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": 3}, "messages[0].content[0].image_url"),
        ({"type": "image_url", "image_url": {"url": ""}}, "messages[0].content[0].image_url.url"),
        (
            {"type": "image_url", "image_url": {"url": "x", "detail": "max"}},
            "messages[0].content[0].image_url.detail",
        ),
        ({"type": "image_url", "image_url": "ftp://x"}, "messages[0].content[0].image_url"),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,abc"}},
            "messages[0].content[0].image_url.url",
        ),
    ],
)
def test_bad_image_parts_name_their_param(part: dict[str, Any], param: str) -> None:
    error = refused(body(user(part)))
    assert (error.status, error.param) == (400, param)


# -- response_format ------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_response_format_text_is_plain() -> None:
    chat = parse(body(user("hi"), response_format={"type": "text"}))
    assert (chat.turn.text, chat.turn.output_schema, chat.json_mode) == ("hi", None, False)


def test_json_object_asks_for_one_object() -> None:
    chat = parse(body(user("hi"), response_format={"type": "json_object"}))
    # The note goes on whichever turn runs (see the test above).
    assert (chat.turn.text, chat.json_mode) == ("hi", True)
    assert chat.turn.output_schema is None


def test_json_schema_becomes_the_output_schema() -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
    }
    chat = parse(body(user("hi"), response_format=fmt))
    assert chat.turn.output_schema == SCHEMA
    assert chat.turn.text == "hi"


def test_json_schema_without_a_schema_is_json_mode() -> None:
    chat = parse(
        body(user("hi"), response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    )
    assert chat.turn.output_schema is None
    assert chat.json_mode


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ("json", "response_format"),
        ({}, "response_format.type"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "has space"}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
    ],
)
def test_bad_response_formats_name_their_param(fmt: Any, param: str) -> None:
    error = refused(body(user("hi"), response_format=fmt))
    assert (error.status, error.param) == (400, param)


# -- stop -----------------------------------------------------------------------------------


def test_stop_as_a_string_or_a_list() -> None:
    assert parse(body(user("hi"), stop="END")).stop == ("END",)
    assert parse(body(user("hi"), stop=["a", "", "b"])).stop == ("a", "b")
    assert parse(body(user("hi"), stop=None)).stop == ()
    assert parse(body(user("hi"))).stop == ()


@pytest.mark.parametrize("stop", [3, ["a", 1], ["a", "b", "c", "d", "e"], {"s": "x"}])
def test_bad_stops_are_refused(stop: Any) -> None:
    error = refused(body(user("hi"), stop=stop))
    assert error.status == 400
    assert error.param is not None
    assert error.param.startswith("stop")


def test_at_most_four_stops_says_so() -> None:
    assert (
        refused(body(user("hi"), stop=list("abcde"))).message
        == "stop must contain at most 4 item(s)"
    )


# -- refused and ignored fields -------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": TOOLS},  # what OpenWebUI sends by default: its built-in tools
        {"tools": TOOLS, "tool_choice": "auto"},
        {"tools": TOOLS, "tool_choice": "none"},
        {"tools": []},
        {"tool_choice": "none"},
        {"functions": [{"name": "f"}], "function_call": "auto"},
        {"parallel_tool_calls": True},
        {"logprobs": False, "top_logprobs": 0},
        {"modalities": ["text"], "audio": None},
        {"max_tokens": 10, "max_completion_tokens": 20},
        {"prediction": {"type": "content", "content": "x"}},
        {"store": True, "service_tier": "auto", "verbosity": "low", "prompt_cache_key": "k"},
        {"safety_identifier": "u1", "logit_bias": {"50256": -100}, "seed": 1},
    ],
)
def test_accepted_fields(fields: dict[str, Any]) -> None:
    chat = parse(body(user("hi"), **fields))
    assert chat.turn.text == "hi"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice", FUNCTION_CALLING),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "tool_choice",
            FUNCTION_CALLING,
        ),
        (
            {"functions": [{"name": "f"}], "function_call": {"name": "f"}},
            "function_call",
            FUNCTION_CALLING,
        ),
        ({"logprobs": True}, "logprobs", "no log probabilities"),
        ({"top_logprobs": 5}, "top_logprobs", "no log probabilities"),
        ({"modalities": ["text", "audio"]}, "modalities", "text only"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "text only"),
        ({"web_search_options": {}}, "web_search_options", "its own configuration"),
        ({"n": 2}, "n", "one answer per turn"),
        ({"tool_choice": "sometimes"}, "tool_choice", "must be"),
        ({"top_logprobs": 21}, "top_logprobs", "<= 20"),
        ({"modalities": ["video"]}, "modalities[0]", "one of text, audio"),
    ],
)
def test_refused_fields_say_why(fields: dict[str, Any], param: str, words: str) -> None:
    error = refused(body(user("hi"), **fields))
    assert (error.status, error.param) == (400, param)
    assert words in error.message


def test_every_ignored_field_says_why_in_the_schema() -> None:
    properties = CHAT_BODY.schema["properties"]
    for name in ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "store"):
        assert properties[name]["description"].startswith("Accepted and ignored: ")
    assert "no bound on the output" in properties["max_tokens"]["description"]
