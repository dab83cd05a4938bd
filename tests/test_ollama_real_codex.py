"""End to end with the official ``ollama`` Python client: HTTP → the Ollama
door → real codex children → the scripted model (fixtures/scripted_model.py),
whose logged requests show what codex sent the model."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import ollama
import pytest
import trio

from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import real_service

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 60
MODEL = "scripted-model"
PNG = bytes.fromhex(  # a 1x1 red pixel
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


@asynccontextmanager
async def ollama_client(
    tmp_path: Path, codex_bin: Path, model: ScriptedModelServer
) -> AsyncIterator[ollama.AsyncClient]:
    """The official client, on a service with real children pointed at ``model``."""
    async with (
        real_service(tmp_path, codex_bin, model) as service,
        ollama.AsyncClient(host=service.url, headers={"Authorization": "Bearer unused"}) as api,
    ):
        yield api


def user_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The content parts of the last user message the model was sent."""
    users = [i for i in body["input"] if i.get("type") == "message" and i.get("role") == "user"]
    parts: list[dict[str, Any]] = users[-1]["content"]
    return parts


async def test_chat_streaming_and_whole(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with ollama_client(tmp_path, codex_bin, scripted_model) as api:
            messages = [{"role": "user", "content": "[scenario:words n=12] count"}]
            parts = [p async for p in await api.chat(model=MODEL, messages=messages, stream=True)]
            whole = await api.chat(model=f"{MODEL}:latest", messages=messages)
    assert all(not p.done for p in parts[:-1])
    assert parts[-1].done
    assert parts[-1].done_reason == "stop"
    text = "".join(p.message.content or "" for p in parts)
    assert text.split() == [f"w{i}" for i in range(1, 13)]
    assert parts[-1].eval_count == 12  # one output token per delta (scripted model)
    assert (parts[-1].prompt_eval_count or 0) > 1000  # codex's own prompt is long
    assert (parts[-1].eval_duration or 0) > 0
    assert (parts[-1].total_duration or 0) >= (parts[-1].load_duration or 0)
    assert whole.message.content == text
    assert whole.done_reason == "stop"
    assert whole.model == f"{MODEL}:latest"


async def test_list_show_ps_version(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with ollama_client(tmp_path, codex_bin, scripted_model) as api:
            listed = await api.list()
            shown = await api.show(MODEL)
            running = await api.ps()
            with pytest.raises(ollama.ResponseError) as missing:
                await api.show("gpt-nope")
    (model,) = listed.models
    assert model.model == f"{MODEL}:latest"
    assert model.size == 0
    assert model.details is not None
    assert model.details.family == "codex"
    assert shown.capabilities is not None
    assert "thinking" in shown.capabilities
    assert shown.modelinfo is not None
    assert shown.modelinfo["codex.model"] == MODEL
    (loaded,) = running.models
    assert loaded.model == f"{MODEL}:latest"
    assert loaded.size_vram == 0
    assert missing.value.status_code == 404
    assert missing.value.error == "model 'gpt-nope' not found"


async def test_generate_with_think(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with ollama_client(tmp_path, codex_bin, scripted_model) as api:
            whole = await api.generate(model=MODEL, prompt="[scenario:reasoning] why?", think=True)
            parts = [
                p
                async for p in await api.generate(
                    model=MODEL, prompt="[scenario:reasoning] why?", think=False, stream=True
                )
            ]
    assert whole.thinking
    assert whole.response
    assert whole.done_reason == "stop"
    assert all(not p.thinking for p in parts)
    assert "".join(p.response or "" for p in parts) == whole.response
    first, second = scripted_model.model.requests
    assert first.body["reasoning"]["summary"] == "auto"
    # think=false: the model's lowest effort, and no summary asked for
    assert second.body["reasoning"]["effort"] == "low"
    assert "summary" not in second.body["reasoning"] or second.body["reasoning"]["summary"] in (
        None,
        "none",
    )


async def test_image_and_schema_reach_the_model(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    with trio.fail_after(TIMEOUT_S):
        async with ollama_client(tmp_path, codex_bin, scripted_model) as api:
            answer = await api.chat(
                model=MODEL,
                messages=[
                    {
                        "role": "user",
                        "content": "[scenario:plain] what is this?",
                        "images": [PNG],
                    }
                ],
                format=schema,
            )
    assert answer.message.content == "Hello from the scripted model!"
    (request,) = scripted_model.model.requests
    images = [p for p in user_parts(request.body) if p.get("type") == "input_image"]
    (image,) = images
    assert image["image_url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    text_format = request.body["text"]["format"]
    assert text_format["type"] == "json_schema"
    assert text_format["strict"] is True
    assert text_format["schema"]["properties"] == schema["properties"]


async def test_stop_sequence_ends_the_answer(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    messages = [{"role": "user", "content": "[scenario:slow deltas=40 delay_ms=50] count"}]
    with trio.fail_after(TIMEOUT_S):
        async with ollama_client(tmp_path, codex_bin, scripted_model) as api:
            parts = [
                p
                async for p in await api.chat(
                    model=MODEL, messages=messages, stream=True, options={"stop": ["w5 "]}
                )
            ]
            # leaving the turn interrupted it: codex closed the model's stream early
            await scripted_model.model.wait_stream_cut(since=0)
            whole = await api.chat(
                model=MODEL,
                messages=[{"role": "user", "content": "[scenario:words n=9] count"}],
                options={"stop": ["w4"]},
            )
            after = await api.chat(
                model=MODEL, messages=[{"role": "user", "content": "[scenario:plain] hi"}]
            )
    assert "".join(p.message.content or "" for p in parts) == "w1 w2 w3 w4 "
    assert parts[-1].done
    assert parts[-1].done_reason == "stop"
    assert whole.message.content == "w1 w2 w3 "
    assert whole.done_reason == "stop"
    # the stopped turn was ended early and the child serves the next one
    assert after.message.content == "Hello from the scripted model!"


async def test_unknown_model_is_404(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with ollama_client(tmp_path, codex_bin, scripted_model) as api:
            with pytest.raises(ollama.ResponseError) as chat_error:
                await api.chat(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(ollama.ResponseError) as tag_error:
                await api.generate(model=f"{MODEL}:13b", prompt="hi")
    assert chat_error.value.status_code == 404
    assert chat_error.value.error == "model 'gpt-nope' not found"
    assert tag_error.value.status_code == 404
    assert scripted_model.model.requests == []
