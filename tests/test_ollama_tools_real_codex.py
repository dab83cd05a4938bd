"""The client's functions on ``/api/chat`` through real codex children, with
the official ``ollama`` client's tool loop: the model calls functions, the
answer ends with ``message.tool_calls``, the codex turn waits parked, and the
next request — the history, the assistant message with its calls, and one
``tool`` message per call, with no call ids (the client has none) — streams
the rest of the same turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import trio

from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import RunningService, real_service
from tests.test_client_tools_real_codex import function

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 90
MODEL = "scripted-model"


TOOLS = [function("get_current_timestamp"), function("get_weather")]


def client(service: RunningService) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=service.url, headers={"Authorization": "Bearer unused"})


async def ask(api: ollama.AsyncClient, messages: list[Any], *, stream: bool) -> dict[str, Any]:
    """One request: the assistant message to append, and how the answer ended."""
    if not stream:
        response = await api.chat(model=MODEL, messages=messages, tools=TOOLS)
        return {"message": response.message, "done_reason": response.done_reason, "lines": 1}
    content = ""
    calls: list[ollama.Message.ToolCall] = []
    parts: list[ollama.ChatResponse] = []
    async for part in await api.chat(model=MODEL, messages=messages, tools=TOOLS, stream=True):
        parts.append(part)
        content += part.message.content or ""
        calls += part.message.tool_calls or []
    assert parts[-1].done
    assert all(not p.done for p in parts[:-1])
    message = ollama.Message(role="assistant", content=content, tool_calls=calls or None)
    return {"message": message, "done_reason": parts[-1].done_reason, "lines": len(parts)}


async def tool_loop(service: RunningService, prompt: str, *, stream: bool) -> list[dict[str, Any]]:
    """What a user of the client writes: chat, run the functions asked for, chat again."""
    messages: list[Any] = [{"role": "user", "content": prompt}]
    rounds: list[dict[str, Any]] = []
    async with client(service) as api:
        for _ in range(3):
            answer = await ask(api, messages, stream=stream)
            message = answer["message"]
            calls = message.tool_calls or []
            rounds.append(
                {
                    "done_reason": answer["done_reason"],
                    "content": message.content,
                    "calls": [(c.function.name, dict(c.function.arguments)) for c in calls],
                }
            )
            if not calls:
                return rounds
            messages.append(message)
            for call in calls:
                name = call.function.name
                messages.append({"role": "tool", "content": f"{name} says 42", "tool_name": name})
    raise AssertionError(f"no answer after 3 rounds: {rounds}")


def model_inputs(model: ScriptedModelServer) -> list[list[dict[str, Any]]]:
    return [request.body["input"] for request in model.model.requests]


def users_of(items: list[dict[str, Any]]) -> list[Any]:
    return [i["content"] for i in items if i.get("type") == "message" and i.get("role") == "user"]


def one_turn(model: ScriptedModelServer, results: list[str]) -> None:
    """The model saw one codex turn: its second request carries the calls of
    the first and their outputs — the client's results — by codex's call ids."""
    inputs = model_inputs(model)
    assert len(inputs) == 2
    # The results came as outputs, not as a new user message.
    assert users_of(inputs[1]) == users_of(inputs[0])
    calls = [i for i in inputs[1] if i.get("type") == "function_call"]
    outputs = [i for i in inputs[1] if i.get("type") == "function_call_output"]
    assert [o["call_id"] for o in outputs] == [c["call_id"] for c in calls]
    assert [o["output"] for o in outputs] == results
    offered = {t.get("name") for t in model.model.requests[0].body["tools"]}
    assert {"get_current_timestamp", "get_weather"} <= offered


@pytest.mark.parametrize("stream", [True, False])
async def test_the_client_tool_loop_resumes_the_same_codex_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer, stream: bool
) -> None:
    prompt = '[scenario:client_tool name=get_current_timestamp args=\'{"tz":"UTC"}\'] What time?'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            rounds = await tool_loop(svc, prompt, stream=stream)
            await trio.sleep(0.2)
            assert svc.handle.supervisor.status()["active_turns"] == 0
    first, second = rounds
    assert first["done_reason"] == "stop"  # Ollama ends a call like any answer
    assert first["calls"] == [("get_current_timestamp", {"tz": "UTC"})]
    assert second["calls"] == []
    assert second["done_reason"] == "stop"
    assert second["content"] == "Tool results: get_current_timestamp says 42"
    one_turn(scripted_model, ["get_current_timestamp says 42"])


@pytest.mark.parametrize("stream", [True, False])
async def test_several_calls_in_one_step(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer, stream: bool
) -> None:
    prompt = "[scenario:client_tool name=get_current_timestamp,get_weather] Time and weather?"
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            rounds = await tool_loop(svc, prompt, stream=stream)
    *calling, last = rounds
    # codex asks for a step's calls as it runs them, in no fixed order; it
    # may ask for the second only after the first answer went out (then it
    # comes in the next answer, of the same turn).
    calls = sorted(call for one in calling for call in one["calls"])
    assert calls == [("get_current_timestamp", {}), ("get_weather", {})]
    assert last["content"] == "Tool results: get_current_timestamp says 42; get_weather says 42"
    one_turn(scripted_model, ["get_current_timestamp says 42", "get_weather says 42"])


async def test_results_find_only_their_own_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """Results after another history, or naming another function, are
    refused (400, Ollama's error shape) and the parked turn still waits for
    the right ones; once answered, nothing waits any more."""
    prompt = '[scenario:client_tool name=get_weather args=\'{"city":"Paris"}\'] Weather?'
    with trio.fail_after(TIMEOUT_S):
        async with (
            real_service(tmp_path, codex_bin, scripted_model) as svc,
            httpx.AsyncClient(base_url=svc.url, timeout=30) as http,
        ):
            user = {"role": "user", "content": prompt}
            body = {"model": MODEL, "messages": [user], "tools": TOOLS, "stream": False}
            first = (await http.post("/api/chat", json=body)).json()
            assistant = first["message"]
            [call] = assistant["tool_calls"]
            assert call["id"].startswith("call")
            assert call["function"] == {
                "index": 0,
                "name": "get_weather",
                "arguments": {"city": "Paris"},
            }
            assert first["done_reason"] == "stop"
            result = {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
            bare = {**assistant, "tool_calls": [{"function": call["function"]}]}

            async def send(messages: list[Any]) -> httpx.Response:
                return await http.post("/api/chat", json={**body, "messages": messages})

            other = await send([{**user, "content": "Something else"}, bare, result])
            misnamed = await send([user, bare, {**result, "tool_name": "get_time"}])
            done = await send([user, bare, result])  # no ids, as the Python client sends
            await trio.sleep(0.2)
            assert svc.handle.supervisor.status()["active_turns"] == 0
            # The same again, with the id: the turn has ended, nothing waits.
            gone = await send([user, assistant, result])
    assert other.status_code == 400
    assert "no function call waits" in other.json()["error"]
    assert misnamed.status_code == 400
    assert "answers no call" in misnamed.json()["error"]
    assert done.status_code == 200
    assert done.json()["message"]["content"] == "Tool results: sunny"
    assert gone.status_code == 400
    assert "no pending function call" in gone.json()["error"]
    one_turn(scripted_model, ["sunny"])
