"""The whole service against replayed transcripts of the real binary.

Each test starts the service with a pool of replay children
(fixtures/replay_child.py) playing a transcript recorded by
fixtures/record.py, and checks what an HTTP client receives. Expected values
are read from the transcript itself, never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import (
    LineLog,
    chat_body,
    content_of,
    make_settings,
    recorded,
    replay_launch,
    running_service,
    sse_events,
)


def recorded_text(name: str) -> str:
    return "".join(p["delta"] for p in recorded(name, "item/agentMessage/delta"))


def recorded_usage(name: str) -> dict[str, int]:
    total = recorded(name, "thread/tokenUsage/updated")[-1]["tokenUsage"]["total"]
    return {
        "prompt_tokens": total["inputTokens"],
        "completion_tokens": total["outputTokens"],
        "total_tokens": total["totalTokens"],
    }


async def test_streamed_answer_matches_the_recording(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body(
                    "[scenario:plain] Say hello", stream_options={"include_usage": True}
                ),
            )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert content_of(events) == recorded_text("plain") == "Hello from the scripted model!"
    # one chunk per agent-message delta
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == len(recorded("plain", "item/agentMessage/delta"))
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == (
        recorded_usage("plain")
    )
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_no_usage_chunk_unless_asked(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            response = await svc.client.post("/v1/chat/completions", json=chat_body("hi"))
    events = sse_events(response.content)
    assert all("usage" not in e for e in events if isinstance(e, dict))
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_deltas_arrive_in_order(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("words")) as svc:
            response = await svc.client.post("/v1/chat/completions", json=chat_body("count"))
    text = content_of(sse_events(response.content))
    assert text == recorded_text("words")
    assert text.split() == [f"w{i}" for i in range(1, 21)]


async def test_non_streaming_completion(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", stream=False)
            )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "scripted-model"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": recorded_text("plain")}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == (
        recorded_usage("plain")
    )


async def test_messages_become_instructions_history_and_input(tmp_path: Path) -> None:
    log = LineLog()
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
        {"role": "user", "content": "[scenario:plain] And now?"},
    ]
    with trio.fail_after(30):
        async with running_service(
            make_settings(tmp_path), replay_launch("history", tap=log)
        ) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json={"model": "scripted-model", "stream": True, "messages": messages},
            )
    assert content_of(sse_events(response.content)) == recorded_text("history")
    (thread_start,) = log.sent("thread/start")
    assert thread_start["params"]["developerInstructions"] == "Answer briefly."
    assert thread_start["params"]["ephemeral"] is True
    (inject,) = log.sent("thread/inject_items")
    assert inject["params"]["items"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "first question"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "first answer"}],
        },
    ]
    (turn_start,) = log.sent("turn/start")
    assert turn_start["params"]["input"] == [{"type": "text", "text": "[scenario:plain] And now?"}]


async def test_reasoning_summary_is_streamed_as_reasoning_content(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("reasoning")) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("think", reasoning_effort="low")
            )
    events = sse_events(response.content)
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content", "")
        for c in events
        if isinstance(c, dict) and c.get("choices")
    )
    parts: dict[int, str] = {}
    for p in recorded("reasoning", "item/reasoning/summaryTextDelta"):
        parts[p["summaryIndex"]] = parts.get(p["summaryIndex"], "") + p["delta"]
    expected = "\n\n".join(parts[i] for i in sorted(parts))  # parts on paragraphs of their own
    assert reasoning == expected
    assert reasoning
    assert content_of(events) == recorded_text("reasoning")


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("http500", 502, "codex_turn_failed"), ("quota", 429, "insufficient_quota")],
)
async def test_model_failure_streams_an_error_then_done(
    tmp_path: Path, name: str, status: int, code: str
) -> None:
    final_error = [p for p in recorded(name, "error") if not p["willRetry"]][-1]
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch(name)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", stream_options={"include_usage": True})
            )
    assert response.status_code == 200  # the stream had started
    events = sse_events(response.content)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1
    assert errors[0]["error"]["message"] == final_error["error"]["message"]
    assert errors[0]["error"]["code"] == code
    assert events[-3]["choices"][0]["finish_reason"] == "error"
    assert events[-2]["usage"]["total_tokens"] == 0
    assert events[-1] == "[DONE]"
    # retry progress ("Reconnecting... 1/1") is not shown as an error
    assert "Reconnecting" not in response.text


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("http500", 502, "codex_turn_failed"), ("quota", 429, "insufficient_quota")],
)
async def test_model_failure_non_streaming_is_an_openai_error(
    tmp_path: Path, name: str, status: int, code: str
) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch(name)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", stream=False)
            )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


async def test_client_disconnect_interrupts_the_turn(tmp_path: Path) -> None:
    log = LineLog()
    expected_deltas = len(recorded("interrupt", "item/agentMessage/delta"))
    with trio.fail_after(30):
        async with running_service(
            make_settings(tmp_path), replay_launch("interrupt", tap=log)
        ) as svc:
            seen = 0
            async with svc.client.stream(
                "POST", "/v1/chat/completions", json=chat_body("long story")
            ) as response:
                async for line in response.aiter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        seen += 1
                        if seen == expected_deltas:
                            break
            # the response is closed: the bridge must interrupt the turn
            child = svc.handle.pool.children[0]
            while not log.sent("turn/interrupt") or svc.handle.multiplexer.load(child):
                await svc.handle.pool.wait_changed()
            (interrupt,) = log.sent("turn/interrupt")
            (turn_start,) = log.sent("turn/start")
            assert interrupt["params"]["threadId"] == turn_start["params"]["threadId"]
            assert child.usable
            assert child.turns_served == 1
            assert not child.turns


async def test_models_and_health(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            health = await svc.client.get("/healthz")
            models = await svc.client.get("/v1/models")
            one = await svc.client.get("/v1/models/scripted-model")
            missing = await svc.client.get("/v1/models/gpt-nope")
    assert health.status_code == 200
    assert health.json()["children_ready"] == 1
    assert models.json() == {
        "object": "list",
        "data": [{"id": "scripted-model", "object": "model", "created": 0, "owned_by": "codex"}],
    }
    assert one.json()["id"] == "scripted-model"
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


BAD_REQUESTS: list[tuple[Any, int, str | None, str]] = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    ({"model": "scripted-model"}, 400, "messages", "messages is required"),
    ({"messages": "hi"}, 400, "messages", "must be an array"),
    ({"messages": []}, 400, "messages", "at least one message"),
    ({"messages": ["hi"]}, 400, "messages[0]", "must be an object"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "must be one of"),
    (
        {"messages": [{"role": "user", "content": 5}]},
        400,
        "messages[0].content",
        "string or an array",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        400,
        "messages[0].content[0].type",
        "must be one of",
    ),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", "from the user"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content", "empty"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream", "boolean"),
    (
        {"messages": [{"role": "user", "content": "x"}], "model": 3},
        400,
        "model",
        "non-empty string",
    ),
    (
        {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        400,
        "temperature",
        "number",
    ),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n", "not supported"),
    (
        {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}},
        400,
        "stream_options.include_usage",
        "boolean",
    ),
    (
        {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"},
        400,
        "reasoning_effort",
        "must be one of",
    ),
    (
        {"messages": [{"role": "user", "content": "x"}], "model": "gpt-nope"},
        404,
        "model",
        "does not exist",
    ),
]


JSON_TYPE = {"content-type": "application/json"}


async def test_bad_requests_get_openai_errors_and_nothing_reaches_codex(tmp_path: Path) -> None:
    log = LineLog()
    with trio.fail_after(60):
        async with running_service(make_settings(tmp_path), replay_launch("plain", tap=log)) as svc:
            for body, status, param, fragment in BAD_REQUESTS:
                if isinstance(body, bytes):
                    response = await svc.client.post(
                        "/v1/chat/completions", content=body, headers=JSON_TYPE
                    )
                else:
                    response = await svc.client.post("/v1/chat/completions", json=body)
                assert response.status_code == status, body
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["param"] == param, body
                assert fragment in error["message"], body
                assert error["type"] == "invalid_request_error"
            wrong_method = await svc.client.get("/v1/chat/completions")
            nowhere = await svc.client.post("/v1/nowhere", json={})
            too_big = await svc.client.post(
                "/v1/chat/completions", content=b"x" * (9 * 1024 * 1024), headers=JSON_TYPE
            )
    assert wrong_method.status_code == 405
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == "unknown_url"
    assert too_big.status_code == 413
    assert not log.sent("thread/start")


async def test_transport_error_detail_is_not_a_stack_trace(tmp_path: Path) -> None:
    async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
        response = await svc.client.post(
            "/v1/chat/completions", content=b"\xff\xfe", headers=JSON_TYPE
        )
    assert response.status_code == 400
    assert "Traceback" not in response.text
    assert isinstance(response.json()["error"]["message"], str)
