"""Parsing Ollama's chat and generate bodies into turns (http_front/ollama/request.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from http_front.conversation.identity import signature
from http_front.errors import ApiError
from http_front.images import ImageLimits
from http_front.ollama.request import base_name, parse_chat, parse_generate

LIMITS = ImageLimits()
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
IMAGE = base64.b64encode(PNG).decode()


def chat(**body: Any) -> Any:
    return parse_chat({"model": "m", **body}, limits=LIMITS, default_effort="medium")


def generate(**body: Any) -> Any:
    return parse_generate({"model": "m", **body}, limits=LIMITS, default_effort="medium")


def refused(parse: Any, **body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**body)
    return caught.value


def test_names_lose_only_the_latest_tag() -> None:
    assert base_name("gpt-5-codex:latest") == "gpt-5-codex"
    assert base_name("gpt-5-codex") == "gpt-5-codex"
    assert base_name("gpt-5-codex:7b") == "gpt-5-codex:7b"


def test_chat_messages_become_instructions_history_and_input() -> None:
    request = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first", "images": [IMAGE]},
            {"role": "assistant", "content": "answer", "thinking": "hmm"},
            {"role": "tool", "content": "42", "tool_name": "calc"},
            {"role": "user", "content": "now?", "images": [IMAGE]},
        ]
    )
    turn = request.turn
    assert request.stream is True  # Ollama streams unless told not to
    assert turn.text == "now?"
    assert turn.model == "m"
    assert turn.developer_instructions == "Be brief."
    assert turn.effort == "medium"
    assert turn.summary == "auto"
    assert turn.history == (
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "first"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE}"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "answer"}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "[result of calc]\n42"}],
        },
    )
    (image,) = request.images
    assert image.data == PNG
    roles = [role for role, _ in request.messages]
    assert roles == ["system", "user", "assistant", "user", "user"]


def test_images_tell_messages_apart() -> None:
    plain = chat(messages=[{"role": "user", "content": "look"}])
    pictured = chat(messages=[{"role": "user", "content": "look", "images": [IMAGE]}])
    assert plain.messages == pictured.messages == (("user", "look"),)
    signed = {signature("user", "look", r.message_images[0]) for r in (plain, pictured)}
    assert len(signed) == 2
    assert plain.turn.text == pictured.turn.text == "look"


@pytest.mark.parametrize(
    ("think", "effort", "summary", "shown"),
    [
        (None, "medium", "auto", True),
        (True, "medium", "auto", True),
        ("low", "low", "auto", True),
        ("high", "high", "auto", True),
        ("max", "xhigh", "auto", True),
        (False, "medium", "none", False),
    ],
)
def test_think(think: Any, effort: str, summary: str, shown: bool) -> None:
    request = chat(messages=[{"role": "user", "content": "x"}], think=think)
    assert (request.turn.effort, request.turn.summary) == (effort, summary)
    assert request.thinking.shown is shown
    assert request.thinking.off is (think is False)


def test_format_and_stop() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    structured = chat(messages=[{"role": "user", "content": "x"}], format=schema)
    assert structured.turn.output_schema == schema
    json_mode = generate(prompt="x", format="json", options={"stop": ["\n\n", ""]})
    # The note goes on whichever turn runs (http_front/turns.py).
    assert (json_mode.turn.text, json_mode.json_mode) == ("x", True)
    assert json_mode.stops == ("\n\n",)
    assert generate(prompt="x", options={"stop": "END"}).stops == ("END",)
    ignored = generate(prompt="x", options={"temperature": 0.1, "num_predict": 5}, keep_alive="5m")
    assert ignored.turn.text == "x"


def test_generate() -> None:
    request = generate(prompt="hi", system="Be brief.", images=[IMAGE], stream=False, raw=True)
    assert request.stream is False
    assert request.turn.text == "hi"
    assert request.turn.developer_instructions == "Be brief."
    assert request.turn.history == ()
    assert len(request.images) == 1
    assert request.load_only is None


def test_nothing_to_run_is_a_load() -> None:
    assert generate().load_only == "load"
    assert generate(prompt="", keep_alive=0).load_only == "unload"
    assert chat(messages=[]).load_only == "load"
    assert chat().load_only == "load"


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"model": 3}, "model", 400),
        ({"messages": "x"}, "messages", 400),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", 400),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content", 400),
        ({"think": "much"}, "think", 400),
        ({"format": "yaml"}, "format", 400),
        ({"options": {"stop": 1}}, "options.stop", 400),
        ({"tools": "all"}, "tools", 400),
        ({"logprobs": True}, "logprobs", 400),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content", 400),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages", 400),
        (
            {"messages": [{"role": "assistant", "content": "x", "images": [IMAGE]}]},
            "messages[0].images",
            400,
        ),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["%%%"]}]},
            "messages[0].images[0]",
            400,
        ),
    ],
)
def test_chat_refusals(body: dict[str, Any], param: str, status: int) -> None:
    body.setdefault("messages", [{"role": "user", "content": "x"}])
    error = refused(chat, **body)
    assert (error.status, error.param) == (status, param)


def test_too_many_and_too_large_images() -> None:
    message = {"role": "user", "content": "x", "images": [IMAGE] * 3}
    with pytest.raises(ApiError) as many:
        parse_chat({"model": "m", "messages": [message]}, limits=ImageLimits(max_count=2))
    assert (many.value.status, many.value.param) == (400, "messages")
    with pytest.raises(ApiError) as large:
        parse_generate(
            {"model": "m", "prompt": "x", "images": [IMAGE]}, limits=ImageLimits(max_bytes=10)
        )
    assert (large.value.status, large.value.param) == (413, "images[0]")


def test_generate_refusals() -> None:
    assert refused(generate, prompt="x", suffix="y").param == "suffix"
    assert refused(generate, prompt="x", context=[1]).param == "context"
    assert refused(generate, prompt=1).param == "prompt"
    assert generate(prompt="x", suffix="", context=[]).turn.text == "x"


def test_client_tools_are_ignored_when_client_tools_is_off() -> None:
    request = chat(
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "get_time", "parameters": {}}}],
    )
    assert request.turn.text == "hi"
