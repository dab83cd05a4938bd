"""The scripted Responses-API model server, driven over HTTP by httpx."""

from __future__ import annotations

import itertools
import os
import sys
import tomllib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

from fixtures.codex_home import API_KEY_ENV, CATALOG_PATH, MODEL_SLUG, write_codex_home
from fixtures.scenarios import (
    DROP_TEXT,
    PARTIAL_TEXT,
    PLAIN_TEXT,
    REASONING_ANSWER,
    ScenarioError,
    add_file_patch,
    echo_text,
    long_deltas,
    parse_marker,
    read_request,
    words,
)
from fixtures.scripted_model import ScriptedModelServer, run_scripted_model

TIMEOUT_S = 10
REPO_ROOT = Path(__file__).resolve().parent.parent

MESSAGE_EVENTS_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
MESSAGE_EVENTS_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]

Event = tuple[str, dict[str, Any]]


# --- helpers ------------------------------------------------------------------------------


def user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def request_body(
    text: str, *, after: Sequence[dict[str, Any]] = (), cache_key: str = "conv-1"
) -> dict[str, Any]:
    """A body shaped like codex's: context message, the user's message, tool items."""
    return {
        "model": MODEL_SLUG,
        "stream": True,
        "prompt_cache_key": cache_key,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "x"}],
            },
            user_message("<environment_context>\n  <cwd>/w</cwd>\n</environment_context>"),
            user_message(text),
            *after,
        ],
    }


def parse_sse(raw: str) -> list[Event]:
    events: list[Event] = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(fields["data"])
        assert data["type"] == fields["event"]
        events.append((fields["event"], data))
    return events


def names(events: Sequence[Event]) -> list[str]:
    return [name for name, _ in events]


def text_deltas(events: Sequence[Event]) -> list[str]:
    return [str(data["delta"]) for name, data in events if name == "response.output_text.delta"]


def message_events(delta_count: int) -> list[str]:
    return [
        *MESSAGE_EVENTS_HEAD,
        *["response.output_text.delta"] * delta_count,
        *MESSAGE_EVENTS_TAIL,
    ]


def usage(events: Sequence[Event]) -> dict[str, Any]:
    name, data = events[-1]
    assert name == "response.completed"
    result: dict[str, Any] = data["response"]["usage"]
    return result


async def post(
    server: ScriptedModelServer, client: httpx.AsyncClient, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(f"{server.base_url}/responses", json=body, headers=headers)


async def stream_events(
    server: ScriptedModelServer, client: httpx.AsyncClient, body: dict[str, Any]
) -> list[Event]:
    response = await post(server, client, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with run_scripted_model() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http_client:
        yield http_client


# --- scenario selection (no server) -------------------------------------------------------


def test_marker_parsing() -> None:
    assert parse_marker("no marker here") == ("echo", {})
    assert parse_marker("run [scenario:slow deltas=50 delay_ms=200] now") == (
        "slow",
        {"deltas": "50", "delay_ms": "200"},
    )
    assert parse_marker('[scenario:exec cmd="echo a]b" x=1]') == (
        "exec",
        {"cmd": "echo a]b", "x": "1"},
    )
    with pytest.raises(ScenarioError, match="key=value"):
        parse_marker("[scenario:words 5]")


def test_last_user_message_skips_codex_context_and_counts_steps() -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "Output:\nok\n"}
    body = request_body(
        "[scenario:exec]",
        after=[
            {"type": "reasoning", "summary": []},
            call,
            output,
            user_message("<turn_aborted>\n</turn_aborted>"),
            call,
            output,
        ],
    )
    facts = read_request(body, session_id=None)
    assert (facts.scenario, facts.step, facts.user_index) == ("exec", 2, 2)
    assert facts.tool_outputs == ("Output:\nok\n", "Output:\nok\n")
    assert facts.conversation_key == "conv-1"
    assert read_request(body, session_id="thread-7").conversation_key == "thread-7"


def test_words_split_keeps_text() -> None:
    text = 'You said: "a  b\nc". Bye.'
    assert "".join(words(text)) == text
    assert len(words(text)) == 6


# --- text scenarios -----------------------------------------------------------------------


async def test_echo_is_the_default_and_usage_follows_the_request(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        body = request_body("What is 2+2?")
        raw = orjson.dumps(body)
        response = await client.post(
            f"{server.base_url}/responses",
            content=raw,
            headers={"content-type": "application/json"},
        )
        events = parse_sse(response.text)
        deltas = text_deltas(events)
        assert "".join(deltas) == echo_text("What is 2+2?")
        assert "".join(deltas).startswith('You said: "What is 2+2?".')
        assert names(events) == [*message_events(len(deltas)), "response.completed"]
        assert usage(events) == {
            "input_tokens": len(raw) // 4,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(deltas),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": len(raw) // 4 + len(deltas),
        }
        # The same conversation again: half the input counts as cached.
        again = await client.post(
            f"{server.base_url}/responses",
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert usage(parse_sse(again.text))["input_tokens_details"] == {
            "cached_tokens": len(raw) // 4 // 2
        }
        [first, second] = server.model.requests
        assert (first.scenario, first.attempt, second.attempt) == ("echo", 1, 2)
        assert first.path == "/v1/responses"
        assert first.headers["content-type"] == "application/json"
        assert server.model.user_texts(first) == ["What is 2+2?"]
        assert server.model.user_texts(first, include_injected=True)[0].startswith(
            "<environment_context>"
        )
        assert (server.model.streams_started, server.model.streams_finished) == (2, 2)


async def test_event_ids_and_sequence_numbers(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(server, client, request_body("[scenario:plain]"))
        assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
        response_ids = {data["response"]["id"] for name, data in events if "response" in data}
        assert len(response_ids) == 1
        assert response_ids.pop().startswith("resp_")
        item = events[2][1]["item"]
        assert item["id"].startswith("msg_")
        assert item["role"] == "assistant"
        assert {data["item_id"] for _, data in events[3:-2]} == {item["id"]}
        done = events[-2][1]["item"]
        assert done["status"] == "completed"
        assert done["content"] == [{"type": "output_text", "text": PLAIN_TEXT, "annotations": []}]
        assert events[-1][1]["response"]["output"] == [done]


@pytest.mark.parametrize(
    ("marker", "scenario", "expected"),
    [
        ("[scenario:plain]", "plain", words(PLAIN_TEXT)),
        ('[scenario:plain text="Two words"]', "plain", ["Two ", "words"]),
        ("[scenario:words n=5]", "words", ["w1 ", "w2 ", "w3 ", "w4 ", "w5 "]),
        ("[scenario:long deltas=300 size=50]", "long", long_deltas(300, 50)),
        ("[scenario:slow deltas=3 delay_ms=10]", "slow", ["w1 ", "w2 ", "w3 "]),
    ],
)
async def test_text_scenarios(
    server: ScriptedModelServer,
    client: httpx.AsyncClient,
    marker: str,
    scenario: str,
    expected: list[str],
) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(server, client, request_body(f"please {marker}"))
        assert text_deltas(events) == expected
        assert names(events) == [*message_events(len(expected)), "response.completed"]
        assert usage(events)["output_tokens"] == len(expected)
        assert server.model.requests[0].scenario == scenario


async def test_long_deltas_have_the_requested_size(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(
            server, client, request_body("[scenario:long deltas=2000 size=7]")
        )
        deltas = text_deltas(events)
        assert len(deltas) == 2000
        assert {len(delta) for delta in deltas} == {7}
        assert deltas[:3] == ["aaaaaaa", "bbbbbbb", "ccccccc"]


async def test_slow_spaces_its_deltas(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        start = trio.current_time()
        events = await stream_events(
            server, client, request_body("[scenario:slow deltas=4 delay_ms=50]")
        )
        assert trio.current_time() - start >= 0.15
        assert text_deltas(events) == ["w1 ", "w2 ", "w3 ", "w4 "]


async def test_reasoning(server: ScriptedModelServer, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(server, client, request_body("[scenario:reasoning]"))
        reasoning_deltas = [
            data for name, data in events if name == "response.reasoning_summary_text.delta"
        ]
        assert {data["summary_index"] for data in reasoning_deltas} == {0, 1}
        parts = [
            data["part"]["text"]
            for name, data in events
            if name == "response.reasoning_summary_part.done"
        ]
        assert [part.split()[0] for part in parts] == ["**Planning**", "**Checking**"]
        reasoning_item = events[2][1]["item"]
        assert reasoning_item["type"] == "reasoning"
        assert reasoning_item["id"].startswith("rs_")
        assert "".join(text_deltas(events)) == REASONING_ANSWER
        first_text = names(events).index("response.output_text.delta")
        assert names(events).index("response.output_item.done") < first_text
        assert usage(events)["output_tokens_details"] == {"reasoning_tokens": len(reasoning_deltas)}
        assert usage(events)["output_tokens"] == len(reasoning_deltas) + len(text_deltas(events))


# --- tool scenarios -----------------------------------------------------------------------


def tool_call(events: Sequence[Event]) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        data["item"] for name, data in events if name == "response.output_item.done"
    ]
    [item] = items
    return item


async def test_exec_calls_exec_command_then_reports_output(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        marker = '[scenario:exec cmd="echo done-42"]'
        events = await stream_events(server, client, request_body(marker))
        assert names(events) == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        call = tool_call(events)
        assert call["type"] == "function_call"
        assert call["name"] == "exec_command"
        assert call["id"].startswith("fc_")
        assert call["call_id"].startswith("call_")
        assert orjson.loads(call["arguments"]) == {"cmd": "echo done-42"}

        output = {
            "type": "function_call_output",
            "call_id": call["call_id"],
            "output": "Chunk ID: 1\nProcess exited with code 0\nOutput:\ndone-42\n",
        }
        events = await stream_events(server, client, request_body(marker, after=[call, output]))
        assert "".join(text_deltas(events)) == "Ran `echo done-42`. Output: done-42"
        assert [(r.step, r.attempt) for r in server.model.requests] == [(0, 1), (1, 1)]


async def test_exec_escalated_asks_for_escalation(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(
            server, client, request_body("[scenario:exec_escalated cmd=ls justification=why]")
        )
        assert orjson.loads(tool_call(events)["arguments"]) == {
            "cmd": "ls",
            "sandbox_permissions": "require_escalated",
            "justification": "why",
        }


async def test_patch_calls_apply_patch(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        marker = "[scenario:patch file=notes.txt text=hi]"
        events = await stream_events(server, client, request_body(marker))
        assert "response.custom_tool_call_input.delta" in names(events)
        call = tool_call(events)
        assert (call["type"], call["name"]) == ("custom_tool_call", "apply_patch")
        assert call["id"].startswith("ctc_")
        assert call["input"] == add_file_patch("notes.txt", "hi")
        assert call["input"] == "*** Begin Patch\n*** Add File: notes.txt\n+hi\n*** End Patch\n"

        output = {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "ok"}
        events = await stream_events(server, client, request_body(marker, after=[call, output]))
        assert "".join(text_deltas(events)) == "Added notes.txt. ok"


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "status", "code", "type_"),
    [
        ("http500", 500, "server_error", "server_error"),
        ("http429", 429, "rate_limit_exceeded", "requests"),
        ("quota", 429, "insufficient_quota", "insufficient_quota"),
        ("http401", 401, "invalid_api_key", "invalid_request_error"),
        ("context_length", 400, "context_length_exceeded", "invalid_request_error"),
    ],
)
async def test_http_errors(
    server: ScriptedModelServer,
    client: httpx.AsyncClient,
    scenario: str,
    status: int,
    code: str,
    type_: str,
) -> None:
    with trio.fail_after(TIMEOUT_S):
        for attempt in (1, 2):
            response = await post(server, client, request_body(f"[scenario:{scenario}]"))
            assert response.status_code == status
            error = response.json()["error"]
            assert (error["code"], error["type"]) == (code, type_)
            assert set(error) == {"message", "type", "param", "code"}
            assert server.model.requests[-1].attempt == attempt
        if scenario == "http429":
            assert response.headers["retry-after"] == "1"
        assert server.model.streams_started == 0


async def test_http_error_times_then_success(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        body = request_body("[scenario:http429 times=2 retry_after=7]")
        first = await post(server, client, body)
        assert (first.status_code, first.headers["retry-after"]) == (429, "7")
        assert (await post(server, client, body)).status_code == 429
        third = await post(server, client, body)
        assert third.status_code == 200
        assert "".join(text_deltas(parse_sse(third.text))).startswith('You said: "')
        assert [r.attempt for r in server.model.requests] == [1, 2, 3]
        # Another conversation starts counting afresh.
        other = await post(
            server, client, request_body("[scenario:http429 times=2]", cache_key="c2")
        )
        assert other.status_code == 429


async def test_stream_failed(server: ScriptedModelServer, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(server, client, request_body("[scenario:stream_failed]"))
        deltas = text_deltas(events)
        assert "".join(deltas) == PARTIAL_TEXT
        assert names(events) == [*message_events(len(deltas)), "response.failed"]
        assert events[-1][1]["response"]["status"] == "failed"
        assert events[-1][1]["response"]["error"] == {
            "code": "server_error",
            "message": "scripted response.failed",
        }


async def test_incomplete(server: ScriptedModelServer, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT_S):
        events = await stream_events(server, client, request_body("[scenario:incomplete]"))
        assert names(events)[-1] == "response.incomplete"
        response = events[-1][1]["response"]
        assert (response["status"], response["incomplete_details"]) == (
            "incomplete",
            {"reason": "max_output_tokens"},
        )


async def read_until_dropped(
    server: ScriptedModelServer, client: httpx.AsyncClient, body: dict[str, Any]
) -> list[Event]:
    received = bytearray()

    async def read_all() -> None:
        url = f"{server.base_url}/responses"
        async with client.stream("POST", url, json=body) as response:
            async for chunk in response.aiter_bytes():
                received.extend(chunk)

    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        await read_all()
    return parse_sse(received.decode())


async def test_stream_drop_fails_the_first_attempt_only(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        body = request_body("[scenario:stream_drop]")
        events = await read_until_dropped(server, client, body)
        assert text_deltas(events) == words(DROP_TEXT)[:2]
        assert names(events)[-1] == "response.output_text.delta"

        events = await stream_events(server, client, body)
        assert "".join(text_deltas(events)) == DROP_TEXT
        assert [r.attempt for r in server.model.requests] == [1, 2]
        # The scripted drop is the whole script: it counts as finished, not cut.
        assert (server.model.streams_finished, server.model.streams_cut_by_client) == (2, 0)


async def test_stream_drop_always(server: ScriptedModelServer, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT_S):
        body = request_body("[scenario:stream_drop always=1 after=3]")
        for _ in range(2):
            events = await read_until_dropped(server, client, body)
            assert text_deltas(events) == words(DROP_TEXT)[:3]


async def test_stream_idle_pauses_after_the_first_delta(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        url = f"{server.base_url}/responses"
        body = request_body("[scenario:stream_idle idle_ms=300]")
        arrivals: list[float] = []
        received = b""
        async with client.stream("POST", url, json=body) as response:
            async for chunk in response.aiter_bytes():
                received += chunk
                arrivals.append(trio.current_time())
        events = parse_sse(received.decode())
        assert "".join(text_deltas(events)) == PLAIN_TEXT
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert max(gaps) >= 0.25


async def test_client_disconnect_mid_stream_is_counted(server: ScriptedModelServer) -> None:
    with trio.fail_after(TIMEOUT_S):
        model = server.model
        url = httpx.URL(server.base_url)
        assert url.port is not None
        payload = orjson.dumps(request_body("[scenario:slow deltas=100 delay_ms=50]"))
        head = (
            f"POST /v1/responses HTTP/1.1\r\nhost: {url.host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(model.wait_stream_cut)
            await trio.testing.wait_all_tasks_blocked()
            # A raw socket, so that closing it really closes the connection mid-stream.
            async with await trio.open_tcp_stream(url.host, url.port) as stream:
                await stream.send_all(head.encode() + payload)
                received = b""
                while b"response.output_text.delta" not in received:
                    chunk = await stream.receive_some()
                    assert chunk
                    received += chunk
        assert model.streams_cut_by_client == 1
        assert (model.streams_started, model.streams_finished) == (1, 0)
        # Already above the threshold: returns at once.
        await model.wait_stream_cut(since=0)


# --- bad requests and other routes -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scenario:nope]", "unknown scenario 'nope'"),
        ("[scenario:words m=1]", "unknown parameter(s) ['m']"),
        ("[scenario:words n=many]", "n='many' is not an integer"),
        ("[scenario:words n=0]", "n must be >= 1"),
        ("[scenario:exec cmd='unterminated]", "malformed scenario marker"),
    ],
)
async def test_bad_scenarios_are_400(
    server: ScriptedModelServer, client: httpx.AsyncClient, text: str, message: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        response = await post(server, client, request_body(text))
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_scenario"
        assert message in error["message"]


async def test_invalid_json_is_400(server: ScriptedModelServer, client: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT_S):
        response = await client.post(f"{server.base_url}/responses", content=b"{nope")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        assert server.model.requests == []


async def test_models_and_unknown_paths(
    server: ScriptedModelServer, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT_S):
        models = await client.get(f"{server.base_url}/models")
        assert models.status_code == 200
        assert [model["id"] for model in models.json()["data"]] == [MODEL_SLUG]
        missing = await client.get(f"{server.base_url}/nothing")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        wrong_method = await client.get(f"{server.base_url}/responses")
        assert wrong_method.status_code == 404


# --- the command line and the codex home ------------------------------------------------


async def test_main_prints_and_writes_the_base_url(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    command = [
        sys.executable,
        "-m",
        "fixtures.scripted_model",
        "--port",
        "0",
        "--url-file",
        str(url_file),
    ]
    process = await trio.lowlevel.open_process(command, stdout=-1, cwd=REPO_ROOT)
    try:
        with trio.fail_after(TIMEOUT_S):
            assert process.stdout is not None
            printed = b""
            while not printed.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the server exited before printing its URL"
                printed += chunk
            base_url = printed.decode().strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/v1")
            assert (await trio.Path(url_file).read_text()).strip() == base_url
            async with httpx.AsyncClient() as http_client:
                models = await http_client.get(f"{base_url}/models")
            assert models.status_code == 200
    finally:
        process.terminate()
        with trio.move_on_after(TIMEOUT_S, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()


def test_write_codex_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = write_codex_home(
        home, "http://127.0.0.1:9/v1", stream_max_retries=0, approval_policy="never"
    )
    assert env == {API_KEY_ENV: "scripted", "RUST_LOG": "warn"}
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["model"] == MODEL_SLUG
    assert config["model_provider"] == "scripted"
    assert config["approval_policy"] == "never"
    assert config["sandbox_mode"] == "workspace-write"
    assert config["model_providers"]["scripted"] == {
        "name": "scripted",
        "base_url": "http://127.0.0.1:9/v1",
        "env_key": API_KEY_ENV,
        "wire_api": "responses",
        "request_max_retries": 1,
        "stream_max_retries": 0,
        "stream_idle_timeout_ms": 20000,
    }
    catalog_path = Path(config["model_catalog_json"])
    assert catalog_path.is_absolute()
    assert catalog_path.read_bytes() == CATALOG_PATH.read_bytes()
    [entry] = orjson.loads(catalog_path.read_bytes())["models"]
    assert entry["slug"] == MODEL_SLUG
    assert entry["apply_patch_tool_type"] == "freeform"
    assert entry["shell_type"] == "unified_exec"

    bare = tmp_path / "bare"
    write_codex_home(bare, "http://127.0.0.1:9/v1", with_catalog=False)
    assert "model_catalog_json" not in tomllib.loads((bare / "config.toml").read_text())
    assert not os.path.exists(bare / "model_catalog.json")
