"""Hostile input at the HTTP front: every refusal is a 4xx in OpenAI's error
shape, nothing reaches codex that codex would refuse, nothing is a 5xx.

Regression tests for wrongly typed fields, over-long turn input, JSON-less
content types and Hypercorn's own refusals, then a property-based fuzz of
bodies and headers against one running service (fake children).
"""

from __future__ import annotations

import collections
import copy
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import trio
from hypercorn.protocol.h11 import H11Protocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codex_bridge.service import child_launch
from fixtures.codex_home import write_codex_home
from fixtures.scripted_model import ScriptedModelServer
from http_front.chat.request import REASONING_EFFORTS
from http_front.hypercorn_errors import HypercornChanged, install
from http_front.turn_input import MAX_TURN_INPUT_CHARS
from supervisor.outcome import InputTooLarge, RefusalKind
from supervisor.turn import TurnRequest
from tests.helpers import (
    LineLog,
    RunningService,
    fake,
    make_settings,
    running_service,
)

TIMEOUT_S = 60
LIMIT = MAX_TURN_INPUT_CHARS
MODEL = "fake-model"  # what tests/fake_app_server.py lists


@asynccontextmanager
async def fake_service(tmp_path: Path, tap: LineLog | None = None) -> AsyncIterator[RunningService]:
    async with running_service(make_settings(tmp_path), fake("ok", tap=tap)) as service:
        yield service


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def body_of(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **fields}


def assert_openai_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """The response is a 4xx carrying exactly OpenAI's error object."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    if status is not None:
        assert response.status_code == status, response.content[:300]
    media = response.headers.get("content-type", "")
    assert media.split(";")[0].strip() == "application/json", (media, response.content[:300])
    payload = orjson.loads(response.content)
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return dict(error)


# -- 1. every field the parser reads is type-checked ---------------------------------


#: (extra body fields, a message before the last one, the param named in the 400)
WRONGLY_TYPED: list[tuple[dict[str, Any], dict[str, Any] | None, str]] = [
    ({"reasoning_effort": ["high"]}, None, "reasoning_effort"),
    ({"reasoning_effort": {"level": "high"}}, None, "reasoning_effort"),
    ({"reasoning_effort": 3}, None, "reasoning_effort"),
    ({"user": 42}, None, "user"),
    ({"user": ["u"]}, None, "user"),
    ({"metadata": ["conversation_id"]}, None, "metadata"),
    ({"metadata": {"conversation_id": 7}}, None, "metadata.conversation_id"),
    ({"tools": {"type": "function"}}, None, "tools"),
    (
        {},
        {"role": "user", "content": [{"type": ["text"], "text": "hi"}]},
        "messages[0].content[0].type",
    ),
    ({}, {"role": "tool", "content": "out", "name": {"n": 1}}, "messages[0].name"),
    ({}, {"role": "tool", "content": "out", "tool_call_id": ["c"]}, "messages[0].tool_call_id"),
]


async def test_wrongly_typed_fields_are_a_400_naming_them(tmp_path: Path) -> None:
    answers: list[tuple[str, httpx.Response]] = []
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path) as svc:
            for fields, message, param in WRONGLY_TYPED:
                messages = [user("hi")] if message is None else [message, user("hi")]
                body = body_of(*messages, **fields)
                response = await svc.client.post("/v1/chat/completions", json=body)
                answers.append((param, response))
            healthy = await svc.client.get("/healthz")
    for param, response in answers:
        error = assert_openai_error(response, 400)
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"
    assert healthy.status_code == 200


# -- 2. a turn's input within codex's limit ------------------------------------------


async def test_a_prompt_over_codex_input_limit_is_a_400_naming_the_limit(tmp_path: Path) -> None:
    log = LineLog()
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path, tap=log) as svc:
            over = await svc.client.post(
                "/v1/chat/completions",
                json=body_of(
                    user("earlier"), {"role": "assistant", "content": "ok"}, user("é" * (LIMIT + 1))
                ),
            )
            # Characters are counted, not bytes: exactly the limit of two-byte
            # characters goes through.
            at_limit = await svc.client.post(
                "/v1/chat/completions", json=body_of(user("é" * LIMIT))
            )
    error = assert_openai_error(over, 400)
    assert error["param"] == "messages[2].content"
    assert error["code"] == "string_above_max_length"
    assert str(LIMIT) in error["message"]
    assert str(LIMIT + 1) in error["message"]
    assert at_limit.status_code == 200, at_limit.content[:300]
    sent = [len(m["params"]["input"][0]["text"]) for m in log.sent("turn/start")]
    assert sent == [LIMIT]


async def test_new_messages_too_long_together_run_on_a_fresh_thread(tmp_path: Path) -> None:
    """A conversation's new user messages are joined into one turn's input;
    together over the limit, the turn runs on a fresh thread with the earlier
    ones as history instead of being sent to codex (which refuses it)."""
    log = LineLog()
    half = "x" * (LIMIT // 2 + 1)
    headers = {"x-conversation-id": "joined-over-the-limit"}
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path, tap=log) as svc:
            first = await svc.client.post(
                "/v1/chat/completions", json=body_of(user("hi")), headers=headers
            )
            answer = first.json()["choices"][0]["message"]["content"]
            second = await svc.client.post(
                "/v1/chat/completions",
                json=body_of(
                    user("hi"), {"role": "assistant", "content": answer}, user(half), user(half)
                ),
                headers=headers,
            )
    assert first.status_code == 200
    assert second.status_code == 200, second.content[:300]
    texts = [m["params"]["input"][0]["text"] for m in log.sent("turn/start")]
    assert [len(t) for t in texts] == [2, len(half)]
    assert len(log.sent("thread/start")) == 2  # the second turn on a fresh thread
    assert not log.sent("thread/resume")
    injected = log.sent("thread/inject_items")[-1]["params"]["items"]
    assert len(injected) == 3  # hi, the answer, the first long message


@pytest.mark.real_codex
async def test_codex_refuses_a_turn_input_one_character_over_the_limit(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """MAX_TURN_INPUT_CHARS is codex's own limit, counted in characters."""
    config = make_settings(tmp_path, codex_bin=str(codex_bin))
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CODEX_API_KEY")}
    environ.update(write_codex_home(config.codex_home_path, scripted_model.base_url))
    marker = "[scenario:plain] "
    with trio.fail_after(TIMEOUT_S):
        async with running_service(config, child_launch(config, environ=environ)) as svc:
            mux = svc.handle.multiplexer
            over = marker + "é" * (LIMIT + 1 - len(marker))
            with pytest.raises(InputTooLarge) as refused:  # codex's own refusal, typed
                async with mux.open_turn(TurnRequest(text=over)):
                    pass
            at_limit = marker + "é" * (LIMIT - len(marker))
            async with mux.open_turn(TurnRequest(text=at_limit)) as turn:
                assert turn.turn_id
            # Through the API, the same input never reaches codex.
            response = await svc.client.post(
                "/v1/chat/completions", json=body_of(user(over), model="scripted-model")
            )
    assert f"maximum length of {LIMIT} characters" in refused.value.message
    assert refused.value.kind is RefusalKind.INPUT_TOO_LARGE
    error = assert_openai_error(response, 400)
    assert error["code"] == "string_above_max_length"


# -- 3. Hypercorn's own refusals -----------------------------------------------------


async def raw_exchange(svc: RunningService, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a fresh connection; (status, headers, body) of the answer."""
    url = urlsplit(svc.url)
    assert url.hostname is not None
    assert url.port is not None
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    async with stream:
        await stream.send_all(request)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers.get("content-length", len(body))) == len(body)
    return int(status_line.split()[1]), headers, body


def assert_raw_openai_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers.get("content-type") == "application/json", headers
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    return dict(error)


async def test_oversized_headers_get_a_431_with_a_json_body(tmp_path: Path) -> None:
    # h11 refuses a header block once more than 16 KiB of it is buffered
    # unfinished; unterminated, all of it is read, so the answer is not cut
    # short by a reset.
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 20_000
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path) as svc:
            status, headers, body = await raw_exchange(svc, request)
            healthy = await svc.client.get("/healthz")
    assert status == 431
    error = assert_raw_openai_error(headers, body)
    assert "too large" in error["message"]
    assert healthy.status_code == 200


#: (request, Hypercorn's status for it)
MALFORMED_HTTP = [
    # a chunk size that is not hexadecimal
    (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    # a request line that is not one
    (b"NOT AN HTTP REQUEST\r\n\r\n", 400),
    # a header line without a colon
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    # a transfer coding h11 does not implement
    (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: gzip\r\n\r\n",
        501,
    ),
]


async def test_malformed_http_gets_a_400_with_a_json_body(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path) as svc:
            answers = [await raw_exchange(svc, request) for request, _ in MALFORMED_HTTP]
            healthy = await svc.client.get("/healthz")
    for (_, expected), (status, headers, body) in zip(MALFORMED_HTTP, answers, strict=True):
        assert status == expected
        assert_raw_openai_error(headers, body)
    assert healthy.status_code == 200


def test_the_hypercorn_override_refuses_internals_it_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def different(self: H11Protocol, status_code: int, reason: str) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(H11Protocol, "_send_error_response", different)
    with pytest.raises(HypercornChanged, match="no longer takes"):
        install()


# -- 4. JSON routes take JSON only ---------------------------------------------------


NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "json",
    "+json",
    "",
    None,
]
JSON = ["application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json"]


async def post_as(svc: RunningService, content_type: str | None) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    body = orjson.dumps(body_of(user("hi")))
    return await svc.client.post("/v1/chat/completions", content=body, headers=headers)


async def test_a_body_that_is_not_declared_json_is_a_415(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path) as svc:
            refused = [await post_as(svc, content_type) for content_type in NOT_JSON]
            accepted = [await post_as(svc, content_type) for content_type in JSON]
    for response in refused:
        error = assert_openai_error(response, 415)
        assert error["code"] == "unsupported_content_type"
        assert "application/json" in error["message"]
        # The body was never read: the connection cannot carry another request.
        assert response.headers["connection"] == "close"
    assert [r.status_code for r in accepted] == [200] * len(JSON)


async def test_a_body_over_the_size_limit_is_a_413_that_closes_the_connection(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, max_request_body_bytes=1024)
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            response = await svc.client.post("/v1/chat/completions", json=body_of(user("x" * 2048)))
            after = await svc.client.post("/v1/chat/completions", json=body_of(user("hi")))
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large"
    assert response.headers["connection"] == "close"
    assert after.status_code == 200


async def test_a_refused_request_with_an_unread_body_closes_the_connection(
    tmp_path: Path,
) -> None:
    """404/405 answered without reading the body: the connection cannot be reused."""
    with trio.fail_after(TIMEOUT_S):
        async with fake_service(tmp_path) as svc:
            unknown = await svc.client.post("/v1/nowhere", json=body_of(user("hi")))
            wrong = await svc.client.put("/v1/chat/completions", json=body_of(user("hi")))
            bodiless = await svc.client.get("/v1/nowhere")
            after = await svc.client.post("/v1/chat/completions", json=body_of(user("hi")))
    assert assert_openai_error(unknown, 404)["code"] == "unknown_url"
    assert unknown.headers["connection"] == "close"
    assert_openai_error(wrong, 405)
    assert wrong.headers["connection"] == "close"
    assert_openai_error(bodiless, 404)
    assert "connection" not in bodiless.headers  # nothing unread: kept alive
    assert after.status_code == 200


# -- 5. property-based fuzz ----------------------------------------------------------

_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
#: Any JSON value, nested a little.
junk = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Text with what breaks naive code: NUL, controls, separators, astral characters.
odd_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(["\x00", "\n", "\u2028", "😀", "\ufeff"]),
    max_size=40,
)
prompt = odd_text.filter(str.strip)
huge_text = st.sampled_from(
    ["x" * LIMIT, "é" * (LIMIT + 1), "😀" * (LIMIT // 2 + 1), "a\x00" * (LIMIT // 2 + 1)]
)
text_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "input_text"]), "text": odd_text}
)
earlier_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
        "content": st.one_of(odd_text, st.lists(text_part, max_size=2), st.none()),
    },
    optional={"name": st.text(max_size=10), "tool_call_id": st.text(max_size=10)},
)
last_message = st.fixed_dictionaries(
    {
        "role": st.just("user"),
        "content": st.one_of(prompt, st.lists(text_part, max_size=2)),
    }
)
#: Bodies a client could well send; most are answered with a completion.
valid_body = st.fixed_dictionaries(
    {
        "messages": st.builds(
            lambda rest, last: [*rest, last], st.lists(earlier_message, max_size=3), last_message
        )
    },
    optional={
        "model": st.just(MODEL),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "reasoning_effort": st.sampled_from(sorted(REASONING_EFFORTS)),
        "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 10_000),
        "n": st.just(1),
        "user": odd_text,
        "metadata": st.fixed_dictionaries({"conversation_id": odd_text}),
        "tools": st.just([]),
        "unknown_field": junk,
    },
)
_fields = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "reasoning_effort",
    "temperature",
    "max_tokens",
    "n",
    "user",
    "metadata",
    "tools",
]
#: Where junk goes inside a body: a field, a message, a message's field, a part.
_PATHS: list[tuple[Any, ...]] = [
    *((field,) for field in _fields),
    ("stream_options", "include_usage"),
    ("metadata", "conversation_id"),
    ("messages", 0),
    *(("messages", 0, key) for key in ("role", "content", "name", "tool_call_id")),
    ("messages", 0, "content", 0, "type"),
    ("messages", 0, "content", 0, "text"),
]
#: A value of the wrong type, more often a container (they are unhashable).
wrong = st.one_of(
    _scalar,
    st.lists(junk, max_size=3),
    st.dictionaries(st.text(max_size=8), junk, max_size=3),
)


def _child(where: Any, step: Any) -> Any:
    if isinstance(where, dict):
        return where.get(step)
    if isinstance(where, list) and isinstance(step, int) and step < len(where):
        return where[step]
    return None


def _put(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``body`` with ``value`` at ``path``, or as deep along it as it goes."""
    body = copy.deepcopy(body)
    where: Any = body
    for step in path[:-1]:
        inner = _child(where, step)
        if not isinstance(inner, dict | list):
            break
        where = inner
    last = path[-1]
    if isinstance(where, dict):
        where[str(last)] = value
    elif isinstance(where, list) and isinstance(last, int) and last < len(where):
        where[last] = value
    return body


#: A plausible body with junk (or nothing, or the same thing in another type)
#: in one or two places.
def _mutate(changes: list[tuple[tuple[Any, ...], Any]], body: dict[str, Any]) -> dict[str, Any]:
    for path, value in changes:
        body = _put(body, path, value)
    return body


#: A plausible body with a value of the wrong type (or nothing, or the right
#: type) in one or two places. The places are drawn first: hypothesis draws
#: what comes after a large draw (the body) from a narrower range.
mutated_body = st.builds(
    _mutate,
    st.lists(st.tuples(st.sampled_from(_PATHS), wrong), min_size=1, max_size=2),
    valid_body,
)
#: One message around codex's input limit (each side of it).
huge_body = st.builds(
    lambda text, stream: {"model": MODEL, "stream": stream, "messages": [user(text)]},
    huge_text,
    st.booleans(),
)
body_bytes = st.one_of(
    huge_body.map(orjson.dumps),
    valid_body.map(orjson.dumps),
    valid_body.map(orjson.dumps),
    mutated_body.map(orjson.dumps),
    mutated_body.map(orjson.dumps),
    mutated_body.map(orjson.dumps),
    junk.map(orjson.dumps),  # JSON, mostly not an object
    st.binary(max_size=100),  # not JSON, not even UTF-8
    valid_body.map(lambda b: orjson.dumps(b)[:-2]),  # truncated
)
#: Header values: any byte a header may carry.
header_value = st.binary(max_size=80).map(
    lambda raw: bytes(b for b in raw if b == 0x09 or 0x20 <= b != 0x7F).strip()
)
extra_headers = st.dictionaries(
    st.sampled_from(
        [
            "x-conversation-id",
            "x-openwebui-chat-id",
            "x-openwebui-task",
            "accept",
            "authorization",
            "origin",
            "x-unknown",
        ]
    ),
    header_value,
    max_size=3,
)
json_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/problem+json"]
)
other_types = st.one_of(
    st.sampled_from(
        ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "text/json", ""]
    ),
    header_value.map(lambda v: v.decode("latin-1")),
)


def _declared_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return media == "application/json" or (
        bool(kind) and subtype.endswith("+json") and subtype != "+json"
    )


def check_chat_response(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:300])
    if response.status_code >= 400:
        assert_openai_error(response)
        return
    assert response.status_code == 200
    media = response.headers["content-type"].split(";")[0]
    if media == "text/event-stream":
        assert response.content.rstrip().endswith(b"data: [DONE]")
    else:
        assert orjson.loads(response.content)["object"] == "chat.completion"


#: A body with every field the parser reads, each with a plausible value.
FULL_BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "part"}], "name": "n"},
        {"role": "tool", "content": "output", "name": "tool", "tool_call_id": "call"},
        {"role": "user", "content": "hi"},
    ],
    "stream": False,
    "stream_options": {"include_usage": True},
    "reasoning_effort": "low",
    "temperature": 0.5,
    "max_tokens": 100,
    "n": 1,
    "user": "sweep",
    "metadata": {"conversation_id": "sweep"},
    "tools": [],
}
#: One of each JSON type, and the awkward members of some.
WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    2**64 - 1,
    "",
    "\x00",
    "x",
    [],
    ["x"],
    {},
    {"k": [1]},
]


#: The JSON types each place of _PATHS takes; ``null`` is the field left out.
ACCEPTED_TYPES: dict[tuple[Any, ...], set[str]] = {
    ("model",): {"null", "string"},
    ("messages",): {"array"},
    ("stream",): {"null", "boolean"},
    ("stream_options",): {"null", "object"},
    ("reasoning_effort",): {"null", "string"},
    ("temperature",): {"null", "integer", "number"},
    ("max_tokens",): {"null", "integer", "number"},
    ("n",): {"null", "integer"},
    ("user",): {"null", "string"},
    ("metadata",): {"null", "object"},
    ("tools",): {"null", "array"},
    ("stream_options", "include_usage"): {"null", "boolean"},
    ("metadata", "conversation_id"): {"null", "string"},
    ("messages", 0): {"object"},
    ("messages", 0, "role"): {"string"},
    ("messages", 0, "content"): {"null", "string", "array"},
    ("messages", 0, "name"): {"null", "string"},
    ("messages", 0, "tool_call_id"): {"null", "string"},
    ("messages", 0, "content", 0, "type"): {"string"},
    ("messages", 0, "content", 0, "text"): {"string"},
}


def json_type(value: Any) -> str:
    for kind, name in [(bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")]:
        if isinstance(value, kind):
            return name
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def param_of(path: tuple[Any, ...]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")


def check_swept(path: tuple[Any, ...], value: Any, response: httpx.Response) -> None:
    """A value of a type the place does not take is a 400 naming it; one it
    takes is answered, or refused naming that place (an empty model, n=0, an
    unknown role)."""
    check_chat_response(response)
    where = param_of(path)
    if json_type(value) not in ACCEPTED_TYPES[path]:
        assert response.status_code == 400, (where, value, response.content[:200])
    if response.status_code >= 400:
        param = orjson.loads(response.content)["error"]["param"]
        assert param == where or param.startswith((where + ".", where + "[")), (
            where,
            value,
            response.content[:200],
        )


def sweep_cases() -> list[tuple[tuple[Any, ...], Any]]:
    """Each value of WRONG_VALUES in each place of _PATHS."""
    assert set(ACCEPTED_TYPES) == set(_PATHS)
    return [(path, value) for path in _PATHS for value in WRONG_VALUES]


def run_fuzz(url: str, deadline: float) -> tuple[collections.Counter[int], int]:
    """The sweep, then the hypothesis runs, in a worker thread, against the
    service at ``url``; every case fails at once after ``deadline``
    (time.monotonic). Returns the count of each status, and of sweep cases."""
    statuses: collections.Counter[int] = collections.Counter()
    common = settings(
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    with httpx.Client(base_url=url, timeout=15) as client:

        def post(body: bytes, headers: dict[str, Any]) -> httpx.Response:
            if time.monotonic() > deadline:
                pytest.fail("the fuzz ran out of time")
            response = client.post("/v1/chat/completions", content=body, headers=headers)
            statuses[response.status_code] += 1
            return response

        @settings(common, max_examples=300)
        @given(body=body_bytes, headers=extra_headers)
        def bodies(body: bytes, headers: dict[str, bytes]) -> None:
            response = post(body, {**headers, "content-type": b"application/json"})
            check_chat_response(response)

        @settings(common, max_examples=150)
        @given(
            body=valid_body.map(orjson.dumps) | st.binary(max_size=50),
            content_type=st.one_of(st.none(), json_types, other_types),
            headers=extra_headers,
        )
        def content_types(body: bytes, content_type: str | None, headers: dict[str, bytes]) -> None:
            sent: dict[str, Any] = dict(headers)
            if content_type is not None:
                sent["content-type"] = content_type.encode("latin-1")
            response = post(body, sent)
            check_chat_response(response)
            if "origin" in headers:  # a page of another origin is refused before all else
                assert response.status_code == 403, (headers, response.content[:200])
            elif not _declared_json(content_type):
                assert response.status_code == 415, (content_type, response.content[:200])

        # Every place, every wrong type: a sure floor under the random search.
        cases = sweep_cases()
        for path, value in cases:
            body = orjson.dumps(_put(FULL_BODY, path, value))
            check_swept(path, value, post(body, {"content-type": b"application/json"}))
        bodies()
        content_types()
    return statuses, len(cases)


async def test_fuzzed_bodies_and_headers_never_get_a_5xx(tmp_path: Path) -> None:
    started = time.monotonic()
    with trio.fail_after(60):
        async with fake_service(tmp_path) as svc:
            # Hypothesis drives sync examples: it runs in a worker thread with
            # a blocking client while the service runs on this trio loop. The
            # thread cannot be cancelled, so it is bounded by its own deadline
            # (and each request by the client's timeout).
            statuses, swept = await trio.to_thread.run_sync(run_fuzz, svc.url, started + 45)
            healthy = await svc.client.get("/healthz")
            after = await svc.client.post(
                "/v1/chat/completions", json=body_of(user("still there?"))
            )
    print(
        f"\nfuzz: {sum(statuses.values())} requests ({swept} swept, the rest generated)"
        f" in {time.monotonic() - started:.1f}s, by status {dict(sorted(statuses.items()))}"
    )
    assert healthy.status_code == 200
    assert after.status_code == 200
    assert statuses[200] > 0
    assert statuses[415] > 0
    assert statuses[400] > 0
