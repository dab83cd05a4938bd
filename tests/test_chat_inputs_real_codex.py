"""Images, structured output and stop sequences through the chat door, against
the real binary: read from what the scripted model received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from fixtures.images import data_url, png
from fixtures.scenarios import PLAIN_TEXT
from fixtures.scripted_model import RecordedRequest, ScriptedModelServer
from http_front.structured import JSON_MODE_NOTE
from tests.helpers import RunningService, chat_body, content_of, real_service, sse_events

pytestmark = pytest.mark.real_codex
TIMEOUT_S = 90
RED, BLUE = png(rgb=(255, 0, 0)), png(rgb=(0, 0, 255))


def image(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def user_parts(request: RecordedRequest) -> list[list[dict[str, Any]]]:
    """The content parts of each user message the model received (codex's own
    context messages aside)."""
    out = []
    for item in request.body["input"]:
        if item.get("type") != "message" or item.get("role") != "user":
            continue
        parts = [p for p in item["content"] if not p.get("text", "").startswith("<environment")]
        if parts:
            out.append(parts)
    return out


def images_in(parts: list[dict[str, Any]]) -> list[str]:
    return [p["image_url"] for p in parts if p.get("type") == "input_image"]


async def ask(svc: RunningService, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    response = await svc.client.post(
        "/v1/chat/completions",
        json={"model": "scripted-model", "messages": messages, "stream": False, **fields},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_image_reaches_the_model_as_an_input_image(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            message = {
                "role": "user",
                "content": [{"type": "text", "text": "[scenario:plain] What is this?"}, image(RED)],
            }
            body = await ask(svc, [message])
    assert body["choices"][0]["message"]["content"] == PLAIN_TEXT
    (request,) = scripted_model.model.requests
    last = user_parts(request)[-1]
    (seen,) = images_in(last)
    # codex reads the file the bridge wrote and sends the model its bytes.
    assert seen.startswith("data:image/png;base64,")
    assert any("What is this?" in p.get("text", "") for p in last)


async def test_earlier_images_are_replayed_in_the_history(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            messages: list[dict[str, Any]] = [
                {"role": "user", "content": [{"type": "text", "text": "look"}, image(BLUE)]},
                {"role": "assistant", "content": "a blue square"},
                {"role": "user", "content": "[scenario:plain] and now?"},
            ]
            await ask(svc, messages)
    (request,) = scripted_model.model.requests
    first = next(parts for parts in user_parts(request) if images_in(parts))
    assert images_in(first) == [data_url(BLUE)]


async def test_a_conversation_with_another_image_is_another_message(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """History whose first message has the same text but another image than
    what the thread saw: not the same conversation — a fresh thread with the
    client's history, not the thread with the old image."""
    chat = {"X-OpenWebUI-Chat-Id": "images-1"}

    def first(colour: bytes) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "text", "text": "which?"}, image(colour)]}

    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            turns = ([first(BLUE)], [first(RED), {"role": "assistant", "content": ""}])
            answer = ""
            for messages in turns:
                if answer:
                    messages[-1]["content"] = answer
                    messages.append({"role": "user", "content": "[scenario:plain] and?"})
                response = await svc.client.post(
                    "/v1/chat/completions",
                    json={"model": "scripted-model", "messages": messages, "stream": False},
                    headers=chat,
                )
                assert response.status_code == 200, response.text
                answer = response.json()["choices"][0]["message"]["content"]
    _, second = scripted_model.model.requests
    seen = [url for parts in user_parts(second) for url in images_in(parts)]
    assert seen == [data_url(RED)]


async def test_an_image_on_the_conversations_thread(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """A conversation going on on its thread: the new message's image is
    attached, and its text reaches the model without the digest it is
    signed with."""
    chat = {"X-OpenWebUI-Chat-Id": "images-2"}
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            messages: list[dict[str, Any]] = [{"role": "user", "content": "[scenario:plain] hi"}]
            for _ in range(2):
                response = await svc.client.post(
                    "/v1/chat/completions",
                    json={"model": "scripted-model", "messages": messages, "stream": False},
                    headers=chat,
                )
                assert response.status_code == 200, response.text
                answer = response.json()["choices"][0]["message"]["content"]
                messages += [
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": [{"type": "text", "text": "this?"}, image(RED)]},
                ]
    first, second = scripted_model.model.requests
    # The same thread: the model's input grew from the first request's.
    assert second.body["input"][: len(first.body["input"])] == first.body["input"]
    last = user_parts(second)[-1]
    assert images_in(last) == [data_url(RED)]
    texts = [p["text"] for p in last if "text" in p]
    assert "this?" in texts
    assert not any("[image" in t for t in texts)


async def test_json_schema_reaches_the_model_as_text_format(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = '{"city": "Paris"}'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            body = await ask(
                svc,
                [{"role": "user", "content": f"[scenario:plain text='{answer}'] Where?"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "place", "schema": schema, "strict": True},
                },
            )
            # The schema is for that turn only: the next plain turn has none.
            await ask(svc, [{"role": "user", "content": "[scenario:plain] hi"}])
    assert body["choices"][0]["message"]["content"] == answer
    assert orjson.loads(body["choices"][0]["message"]["content"]) == {"city": "Paris"}
    with_schema, without = scripted_model.model.requests
    assert with_schema.body["text"]["format"] == {
        "type": "json_schema",
        "strict": True,
        "name": "codex_output_schema",
        "schema": schema,
    }
    assert "format" not in (without.body.get("text") or {})


async def test_json_object_asks_the_model_for_json(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            body = await ask(
                svc,
                [{"role": "user", "content": "[scenario:plain text='{\"ok\": true}'] Status?"}],
                response_format={"type": "json_object"},
            )
    assert orjson.loads(body["choices"][0]["message"]["content"]) == {"ok": True}
    (request,) = scripted_model.model.requests
    last = user_parts(request)[-1]
    assert last[-1]["text"].endswith(JSON_MODE_NOTE)
    assert "format" not in (request.body.get("text") or {})


async def test_a_stop_sequence_ends_a_streamed_answer_and_the_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    model = scripted_model.model
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            cut_before = model.streams_cut_by_client
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body(
                    "[scenario:slow deltas=200 delay_ms=20] count",
                    stop=["w4 ", "never"],
                    stream_options={"include_usage": True},
                ),
            )
            events = sse_events(response.content)
            # codex was interrupted: it dropped the model's stream
            await model.wait_stream_cut(cut_before)
            assert model.streams_finished == 0
            child = svc.handle.pool.children[0]
            while svc.handle.multiplexer.load(child):
                await svc.handle.pool.wait_changed()
            assert child.usable
            again = await ask(svc, [{"role": "user", "content": "[scenario:plain] again"}])
    assert response.status_code == 200
    assert content_of(events) == "w1 w2 w3 "
    assert events[-1] == "[DONE]"
    finishes = [c["choices"][0]["finish_reason"] for c in events[:-1] if c.get("choices")]
    assert finishes[-1] == "stop"
    assert not any("error" in c for c in events[:-1])
    assert again["choices"][0]["message"]["content"] == PLAIN_TEXT


async def test_a_stop_sequence_ends_a_whole_answer(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            body = await ask(
                svc,
                [{"role": "user", "content": "[scenario:slow deltas=200 delay_ms=20] count"}],
                stop="w3",
            )
    choice = body["choices"][0]
    assert choice["message"]["content"] == "w1 w2 "
    assert choice["finish_reason"] == "stop"
