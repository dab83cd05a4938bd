"""The Ollama door over HTTP, against replayed transcripts of the real binary.

Expected texts and numbers are read from the transcripts (fixtures/transcripts),
never typed in.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from codex_bridge.config import Settings
from http_front.access import ApiKey
from http_front.ollama.route import OLLAMA_VERSION
from tests.helpers import LineLog, make_settings, recorded, replay_launch, running_service

MODEL = "scripted-model"
KEY = "sk-ollama-door-test-key"


def recorded_text(name: str) -> str:
    return "".join(p["delta"] for p in recorded(name, "item/agentMessage/delta"))


def recorded_reasoning(name: str) -> str:
    parts: dict[int, str] = {}
    for p in recorded(name, "item/reasoning/summaryTextDelta"):
        parts[p["summaryIndex"]] = parts.get(p["summaryIndex"], "") + p["delta"]
    return "\n\n".join(parts[i] for i in sorted(parts))


def recorded_usage(name: str) -> tuple[int, int]:
    total = recorded(name, "thread/tokenUsage/updated")[-1]["tokenUsage"]["total"]
    return total["inputTokens"], total["outputTokens"]


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    """Every line of an NDJSON body: each must be one JSON object."""
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    objects = [orjson.loads(one) for one in lines]
    assert all(isinstance(o, dict) for o in objects)
    return objects


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def content(lines: list[dict[str, Any]]) -> str:
    return "".join(o["message"]["content"] for o in lines if "message" in o)


def thinking(lines: list[dict[str, Any]]) -> str:
    return "".join(o["message"].get("thinking", "") for o in lines if "message" in o)


async def post(
    tmp_path: Path,
    transcript: str,
    path: str,
    body: dict[str, Any],
    *,
    log: LineLog | None = None,
    settings: Settings | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    with trio.fail_after(30):
        async with running_service(
            settings or make_settings(tmp_path), replay_launch(transcript, tap=log)
        ) as svc:
            return await svc.client.post(path, json=body, headers=headers or {})


def check_final(last: dict[str, Any], transcript: str) -> None:
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert (last["prompt_eval_count"], last["eval_count"]) == recorded_usage(transcript)
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[name], int)
        assert last[name] >= 0
    assert last["total_duration"] >= last["load_duration"] + last["eval_duration"]
    assert last["eval_duration"] > 0  # text streamed: the model was generating


# -- chat --------------------------------------------------------------------------------


async def test_chat_streams_ndjson(tmp_path: Path) -> None:
    response = await post(tmp_path, "plain", "/api/chat", chat("[scenario:plain] hi"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response.content)
    *chunks, last = lines
    assert all(c["done"] is False and c["model"] == MODEL for c in chunks)
    assert all(c["message"]["role"] == "assistant" for c in chunks)
    assert all("thinking" not in c["message"] for c in chunks)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", c["created_at"]) for c in lines)
    texts = [c["message"]["content"] for c in chunks if c["message"]["content"]]
    assert texts == [p["delta"] for p in recorded("plain", "item/agentMessage/delta")]
    assert content(lines) == recorded_text("plain")
    assert last["message"] == {"role": "assistant", "content": ""}
    check_final(last, "plain")


async def test_chat_whole(tmp_path: Path) -> None:
    response = await post(tmp_path, "plain", "/api/chat", chat("hi", stream=False))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model"] == MODEL
    assert body["message"] == {"role": "assistant", "content": recorded_text("plain")}
    check_final(body, "plain")


async def test_model_with_latest_tag_is_echoed(tmp_path: Path) -> None:
    body = {**chat("hi", stream=False), "model": f"{MODEL}:latest"}
    response = await post(tmp_path, "plain", "/api/chat", body)
    assert response.json()["model"] == f"{MODEL}:latest"
    assert response.json()["message"]["content"] == recorded_text("plain")


async def test_think_streams_thinking(tmp_path: Path) -> None:
    log = LineLog()
    response = await post(tmp_path, "reasoning", "/api/chat", chat("think", think="high"), log=log)
    lines = ndjson(response.content)
    assert thinking(lines) == recorded_reasoning("reasoning")
    assert thinking(lines)
    assert content(lines) == recorded_text("reasoning")
    (turn_start,) = log.sent("turn/start")
    assert turn_start["params"]["effort"] == "high"
    assert turn_start["params"]["summary"] == "auto"


async def test_think_whole(tmp_path: Path) -> None:
    response = await post(tmp_path, "reasoning", "/api/chat", chat("t", think=True, stream=False))
    message = response.json()["message"]
    assert message["thinking"] == recorded_reasoning("reasoning")
    assert message["content"] == recorded_text("reasoning")


async def test_think_false_shows_no_thinking(tmp_path: Path) -> None:
    log = LineLog()
    response = await post(tmp_path, "reasoning", "/api/chat", chat("t", think=False), log=log)
    lines = ndjson(response.content)
    assert all("thinking" not in o["message"] for o in lines)
    assert content(lines) == recorded_text("reasoning")
    (turn_start,) = log.sent("turn/start")
    # the scripted model's catalog entry lists low as its lowest effort
    assert turn_start["params"]["effort"] == "low"
    assert turn_start["params"]["summary"] == "none"


async def test_command_card_in_content(tmp_path: Path) -> None:
    response = await post(tmp_path, "exec", "/api/chat", chat("go", stream=False))
    text = response.json()["message"]["content"]
    (done,) = recorded("exec", "turn/completed")
    answer = [i for i in done["turn"]["items"] if i["type"] == "agentMessage"][-1]["text"]
    card, _, rest = text.partition("</details>")
    assert card.startswith('<details type="tool_calls" done="true" name="shell"')
    assert "line-1\nline-2\nline-3\ndone-42\n```" in card
    assert rest == "\n\n" + answer


async def test_history_and_images_of_earlier_messages(tmp_path: Path) -> None:
    log = LineLog()
    image = base64.b64encode(PNG).decode()
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "first question", "images": [image]},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "[scenario:plain] And now?"},
    ]
    response = await post(
        tmp_path, "history", "/api/chat", {"model": MODEL, "messages": messages}, log=log
    )
    assert content(ndjson(response.content)) == recorded_text("history")
    (thread_start,) = log.sent("thread/start")
    assert thread_start["params"]["developerInstructions"] == "Answer briefly."
    (inject,) = log.sent("thread/inject_items")
    assert inject["params"]["items"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "first question"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{image}"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "first answer"}],
        },
    ]
    (turn_start,) = log.sent("turn/start")
    assert turn_start["params"]["input"] == [{"type": "text", "text": "[scenario:plain] And now?"}]


@pytest.mark.parametrize("stream", [True, False])
async def test_failed_turn(tmp_path: Path, stream: bool) -> None:
    final_error = [p for p in recorded("http500", "error") if not p["willRetry"]][-1]
    message = final_error["error"]["message"]
    response = await post(tmp_path, "http500", "/api/chat", chat("hi", stream=stream))
    if stream:
        assert response.status_code == 200  # the stream had started
        lines = ndjson(response.content)
        assert lines[-1] == {"error": message}
        assert all("error" not in o for o in lines[:-1])
        assert "Reconnecting" not in response.text
    else:
        assert response.status_code == 502
        assert response.json() == {"error": message}


# -- generate ----------------------------------------------------------------------------


async def test_generate_streams_response(tmp_path: Path) -> None:
    log = LineLog()
    body = {"model": MODEL, "prompt": "[scenario:plain] hi", "system": "Be brief."}
    response = await post(tmp_path, "plain", "/api/generate", body, log=log)
    lines = ndjson(response.content)
    *chunks, last = lines
    assert all(set(c) == {"model", "created_at", "response", "done"} for c in chunks)
    assert "".join(c["response"] for c in chunks) == recorded_text("plain")
    assert last["response"] == ""
    check_final(last, "plain")
    (thread_start,) = log.sent("thread/start")
    assert thread_start["params"]["developerInstructions"] == "Be brief."
    assert thread_start["params"]["ephemeral"] is True


async def test_generate_whole_with_thinking(tmp_path: Path) -> None:
    body = {"model": MODEL, "prompt": "t", "stream": False, "think": True}
    response = await post(tmp_path, "reasoning", "/api/generate", body)
    answer = response.json()
    assert answer["response"] == recorded_text("reasoning")
    assert answer["thinking"] == recorded_reasoning("reasoning")
    check_final(answer, "reasoning")


async def test_generate_without_prompt_loads(tmp_path: Path) -> None:
    log = LineLog()
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain", tap=log)) as svc:
            load = await svc.client.post("/api/generate", json={"model": MODEL})
            unload = await svc.client.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
            chat_load = await svc.client.post("/api/chat", json={"model": MODEL, "messages": []})
            missing = await svc.client.post("/api/generate", json={"model": "nope"})
    assert load.json()["done"] is True
    assert load.json()["done_reason"] == "load"
    assert load.json()["response"] == ""
    assert unload.json()["done_reason"] == "unload"
    assert chat_load.json()["message"] == {"role": "assistant", "content": ""}
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'nope' not found"}
    assert log.sent("turn/start") == []


# -- listings ----------------------------------------------------------------------------


async def test_listings(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            root = await svc.client.get("/")
            head = await svc.client.head("/")
            version = await svc.client.get("/api/version")
            tags = await svc.client.get("/api/tags")
            show = await svc.client.post("/api/show", json={"model": f"{MODEL}:latest"})
            show_by_name = await svc.client.post("/api/show", json={"name": MODEL})
            ps = await svc.client.get("/api/ps")
            other_tag = await svc.client.post("/api/show", json={"model": f"{MODEL}:7b"})
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len("Ollama is running"))
    assert version.json() == {"version": OLLAMA_VERSION}
    (model,) = tags.json()["models"]
    assert model["name"] == model["model"] == f"{MODEL}:latest"
    assert model["size"] == 0
    assert re.fullmatch(r"[0-9a-f]{64}", model["digest"])
    assert set(model["details"]) == {
        "parent_model", "format", "family", "families", "parameter_size", "quantization_level"
    }  # fmt: skip
    body = show.json()
    assert show_by_name.json() == body
    assert body["capabilities"] == ["completion", "vision", "thinking"]
    assert body["model_info"]["codex.reasoning_efforts"] == ["low", "medium", "high", "xhigh"]
    assert body["modified_at"] == model["modified_at"]
    (loaded,) = ps.json()["models"]
    assert loaded["name"] == f"{MODEL}:latest"
    assert (loaded["size"], loaded["size_vram"]) == (0, 0)
    assert loaded["expires_at"].startswith("9999-")
    assert other_tag.status_code == 404
    assert other_tag.json() == {"error": f"model '{MODEL}:7b' not found"}


# -- errors ------------------------------------------------------------------------------


async def test_errors_in_ollama_shape(tmp_path: Path) -> None:
    log = LineLog()
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), replay_launch("plain", tap=log)) as svc:
            c = svc.client
            answers = {
                "no model": await c.post("/api/chat", json={"messages": []}),
                "bad think": await c.post("/api/chat", json=chat("x", think="much")),
                "tools": await c.post("/api/chat", json=chat("x", tools="all")),
                "last is assistant": await c.post(
                    "/api/chat",
                    json={"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]},
                ),
                "bad image": await c.post(
                    "/api/chat",
                    json={
                        "model": MODEL,
                        "messages": [
                            {"role": "user", "content": "x", "images": ["bm90IGFuIGltYWdl"]}
                        ],
                    },
                ),
                "suffix": await c.post(
                    "/api/generate", json={"model": MODEL, "prompt": "x", "suffix": "y"}
                ),
                "context": await c.post(
                    "/api/generate", json={"model": MODEL, "prompt": "x", "context": [1, 2]}
                ),
                "logprobs": await c.post(
                    "/api/generate", json={"model": MODEL, "prompt": "x", "logprobs": True}
                ),
                "not json": await c.post(
                    "/api/chat", content=b"{", headers={"content-type": "application/json"}
                ),
                "unknown model": await c.post("/api/chat", json={**chat("x"), "model": "nope"}),
                "pull": await c.post("/api/pull", json={"model": "llama3"}),
                "delete": await c.request("DELETE", "/api/delete", json={"model": MODEL}),
                "embed": await c.post("/api/embed", json={"model": MODEL, "input": "x"}),
                "wrong method": await c.get("/api/chat"),
                "no such route": await c.get("/api/nothing"),
            }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "no model": 400,
        "bad think": 400,
        "tools": 400,
        "last is assistant": 400,
        "bad image": 400,
        "suffix": 400,
        "context": 400,
        "logprobs": 400,
        "not json": 400,
        "unknown model": 404,
        "pull": 501,
        "delete": 501,
        "embed": 501,
        "wrong method": 405,
        "no such route": 404,
    }
    for name, answer in answers.items():
        body = answer.json()
        assert set(body) == {"error"}, name
        assert isinstance(body["error"], str), name
    errors = {name: r.json()["error"] for name, r in answers.items()}
    assert errors["no model"] == "model is required"
    assert errors["tools"] == "tools must be an array"
    assert errors["unknown model"] == "model 'nope' not found"
    assert "codex's models" in errors["pull"]
    assert "messages[0].images[0]" in errors["bad image"]
    assert log.sent("turn/start") == []


async def test_api_key_guards_api_routes_not_root(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=(ApiKey.from_secret("ci", KEY),))
    with trio.fail_after(30):
        async with running_service(settings, replay_launch("plain")) as svc:
            root = await svc.client.get("/")
            head = await svc.client.head("/")
            without = await svc.client.get("/api/tags")
            version = await svc.client.get("/api/version")
            wrong = await svc.client.post(
                "/api/chat", json=chat("hi"), headers={"Authorization": "Bearer sk-wrong"}
            )
            keyed = await svc.client.get("/api/tags", headers={"Authorization": f"Bearer {KEY}"})
    assert (root.status_code, head.status_code) == (200, 200)
    for refused in (without, version, wrong):
        assert refused.status_code == 401
        assert set(refused.json()) == {"error"}
        assert isinstance(refused.json()["error"], str)
    assert keyed.status_code == 200
    assert keyed.json()["models"][0]["name"] == f"{MODEL}:latest"


PNG = bytes.fromhex(  # a 1x1 red pixel
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
