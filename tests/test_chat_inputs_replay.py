"""Images, structured output and stop sequences through the chat door, with
children replaying transcripts of the real binary (fixtures/record.py:
``image``, ``output_schema``, ``words``). Expected values come from the
transcripts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from fixtures.images import data_url, png
from fixtures.record import CITY_SCHEMA
from tests.helpers import (
    LineLog,
    content_of,
    make_settings,
    recorded,
    replay_launch,
    running_service,
    sse_events,
)

RED = png(4, 4, (255, 0, 0))


def recorded_text(name: str) -> str:
    return "".join(p["delta"] for p in recorded(name, "item/agentMessage/delta"))


def chat(content: Any, **fields: Any) -> dict[str, Any]:
    return {
        "model": "scripted-model",
        "messages": [{"role": "user", "content": content}],
        **fields,
    }


@pytest.mark.parametrize("stream", [True, False])
async def test_an_image_goes_to_codex_as_a_local_image(tmp_path: Path, stream: bool) -> None:
    log = LineLog()
    content = [
        {"type": "text", "text": "[scenario:plain] What is in this picture?"},
        {"type": "image_url", "image_url": {"url": data_url(RED), "detail": "high"}},
    ]
    settings = make_settings(tmp_path)
    with trio.fail_after(30):
        async with running_service(settings, replay_launch("image", tap=log)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat(content, stream=stream)
            )
    assert response.status_code == 200, response.text
    answer = (
        content_of(sse_events(response.content))
        if stream
        else response.json()["choices"][0]["message"]["content"]
    )
    assert answer == recorded_text("image")
    (turn_start,) = log.sent("turn/start")
    text, local = turn_start["params"]["input"]
    assert text == {"type": "text", "text": "[scenario:plain] What is in this picture?"}
    assert local["type"] == "localImage"
    path = Path(local["path"])
    # Written into the turn's own directory, named by its digest.
    assert path.parent.name == ".images"
    assert path.name == hashlib.sha256(RED).hexdigest()[:32] + ".png"
    (thread_start,) = log.sent("thread/start")
    assert path.parent.parent == Path(thread_start["params"]["cwd"])


async def test_a_json_schema_is_the_turns_output_schema(tmp_path: Path) -> None:
    log = LineLog()
    fields = {
        "stream": True,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        },
    }
    with trio.fail_after(30):
        async with running_service(
            make_settings(tmp_path), replay_launch("output_schema", tap=log)
        ) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat("Where is the Eiffel tower?", **fields)
            )
    answer = content_of(sse_events(response.content))
    assert answer == recorded_text("output_schema")
    assert orjson.loads(answer) == {"city": "Paris"}
    (turn_start,) = log.sent("turn/start")
    assert turn_start["params"]["outputSchema"] == CITY_SCHEMA


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stop_sequence_cuts_a_replayed_answer(tmp_path: Path, stream: bool) -> None:
    full = recorded_text("words")
    assert full.startswith("w1 w2 w3 w4 w5 ")
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("words")) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat("[scenario:words n=20] Count for me", stream=stream, stop=["w5", "xyz"]),
            )
    assert response.status_code == 200
    if stream:
        events = sse_events(response.content)
        answer = content_of(events)
        finish = [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"]][-1]
    else:
        choice = response.json()["choices"][0]
        answer, finish = choice["message"]["content"], choice["finish_reason"]
    assert answer == full[: full.index("w5")]
    assert finish == "stop"


async def test_an_image_over_the_limit_is_refused_before_any_turn(tmp_path: Path) -> None:
    log = LineLog()
    settings = make_settings(tmp_path, image_max_bytes=len(RED) - 1)
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": data_url(RED)}]
    with trio.fail_after(30):
        async with running_service(settings, replay_launch("image", tap=log)) as svc:
            too_large = await svc.client.post("/v1/chat/completions", json=chat(content))
            remote = await svc.client.post(
                "/v1/chat/completions",
                json=chat([{"type": "image_url", "image_url": "https://example.com/a.png"}]),
            )
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "image_too_large"
    assert remote.status_code == 400
    assert remote.json()["error"]["code"] == "image_url_not_allowed"
    assert log.sent("turn/start") == []
