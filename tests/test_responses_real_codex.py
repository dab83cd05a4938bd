"""``/v1/responses`` end to end with the official openai SDK: the real codex
binary, pointed at the scripted model (whose logged requests show what codex
sent the model)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from fixtures.images import png
from fixtures.scenarios import PLAIN_TEXT
from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import RunningService, real_service

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 90


def sdk(service: RunningService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def user_texts(body: dict[str, Any]) -> list[str]:
    return [
        part.get("text", "")
        for item in body["input"]
        if item.get("type") == "message" and item.get("role") == "user"
        for part in item["content"]
        if part.get("type") == "input_text" and not part.get("text", "").startswith("<")
    ]


async def test_create_stream_continue_get_delete(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            with sdk(svc) as client:

                def first() -> Any:
                    return client.responses.create(
                        model="scripted-model",
                        instructions="Be brief.",
                        input="[scenario:plain] my name is Ada",
                        metadata={"k": "v"},
                    )

                created = await trio.to_thread.run_sync(first)

                def second() -> tuple[list[Any], Any]:
                    with client.responses.stream(
                        model="scripted-model",
                        input="[scenario:echo] what is my name?",
                        previous_response_id=created.id,
                    ) as stream:
                        events = list(stream)
                        return events, stream.get_final_response()

                events, streamed = await trio.to_thread.run_sync(second)
                got = await trio.to_thread.run_sync(lambda: client.responses.retrieve(streamed.id))
                await trio.to_thread.run_sync(lambda: client.responses.delete(streamed.id))

                def gone() -> int:
                    try:
                        client.responses.retrieve(streamed.id)
                    except openai.NotFoundError as exc:
                        return exc.status_code
                    return 200

                status = await trio.to_thread.run_sync(gone)

    assert created.status == "completed"
    assert created.output_text == PLAIN_TEXT
    assert created.metadata == {"k": "v"}
    assert created.usage is not None
    assert created.usage.output_tokens > 0
    assert streamed.status == "completed"
    assert streamed.previous_response_id == created.id
    assert "what is my name?" in streamed.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert got.id == streamed.id
    assert got.output_text == streamed.output_text
    assert got.usage == streamed.usage
    assert status == 404
    first_request, second_request = scripted_model.model.requests
    # the same thread: the second model request carries the first turn and its answer
    assert user_texts(second_request.body) == [
        "[scenario:plain] my name is Ada",
        "[scenario:echo] what is my name?",
    ]
    answers = [
        part["text"]
        for item in second_request.body["input"]
        if item.get("role") == "assistant"
        for part in item["content"]
    ]
    assert PLAIN_TEXT in answers
    assert "Be brief." in str(first_request.body)


async def test_whole_equals_streamed(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            with sdk(svc) as client:

                def both() -> tuple[Any, Any]:
                    whole = client.responses.create(
                        model="scripted-model",
                        input="[scenario:reasoning] think",
                        reasoning={"effort": "high"},
                    )
                    with client.responses.stream(
                        model="scripted-model",
                        input="[scenario:reasoning] think",
                        reasoning={"effort": "high"},
                    ) as stream:
                        kinds = [e.type for e in stream]
                        return whole, (kinds, stream.get_final_response())

                whole, (kinds, streamed) = await trio.to_thread.run_sync(both)
    assert whole.output_text == streamed.output_text
    assert (
        [i.type for i in whole.output]
        == [i.type for i in streamed.output]
        == ["reasoning", "message"]
    )
    assert [s.text for s in whole.output[0].summary] == [s.text for s in streamed.output[0].summary]
    assert len(streamed.output[0].summary) == 2
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds.count("response.reasoning_summary_part.added") == 2
    assert whole.usage is not None
    assert streamed.usage is not None
    assert whole.usage.output_tokens == streamed.usage.output_tokens
    body = scripted_model.model.requests[0].body
    assert body["reasoning"]["effort"] == "high"


async def test_unknown_previous_response_is_404(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:

            def run() -> openai.NotFoundError:
                try:
                    with sdk(svc) as client:
                        client.responses.create(input="hi", previous_response_id="resp_missing")
                except openai.NotFoundError as exc:
                    return exc
                raise AssertionError("no error")

            error = await trio.to_thread.run_sync(run)
    assert error.code == "previous_response_not_found"
    assert error.param == "previous_response_id"
    assert scripted_model.model.requests == []


async def test_an_image_and_a_json_schema_reach_the_model(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    png_image = png(width=1, height=1)
    url = "data:image/png;base64," + base64.b64encode(png_image).decode()
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    answer = '{"answer":"green"}'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:

            def run() -> Any:
                with sdk(svc) as client:
                    return client.responses.create(  # type: ignore[call-overload]
                        input=[
                            {
                                "role": "user",
                                "content": [
                                    {
                                        "type": "input_text",
                                        "text": f"[scenario:plain text='{answer}'] color?",
                                    },
                                    {"type": "input_image", "image_url": url},
                                ],
                            }
                        ],
                        text={
                            "format": {
                                "type": "json_schema",
                                "name": "color",
                                "schema": schema,
                                "strict": True,
                            }
                        },
                    )

            response = await trio.to_thread.run_sync(run)
    assert response.output_text == answer
    (request,) = scripted_model.model.requests
    body = request.body
    assert body["text"]["format"] == {
        "type": "json_schema",
        "strict": True,
        "name": "codex_output_schema",
        "schema": schema,
    }
    images = [
        part
        for item in body["input"]
        if item.get("role") == "user"
        for part in item["content"]
        if part.get("type") == "input_image"
    ]
    assert len(images) == 1
    assert images[0]["image_url"].startswith("data:image/png;base64,")
