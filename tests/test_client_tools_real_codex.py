"""The client's functions through real codex children (dynamic tools), with
the official openai SDK's tool loop: the model calls a function, the answer
ends with ``tool_calls``, the codex turn waits parked, and the client's next
request — carrying the results — streams the rest of the same turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import RunningService, eventually, real_service

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 90


def function(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name.replace('_', ' ')}.",
            "parameters": {"type": "object", "properties": {}},
        },
    }


TOOLS: Any = [function("get_current_timestamp"), function("get_weather")]


def sdk(service: RunningService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def model_inputs(model: ScriptedModelServer) -> list[list[dict[str, Any]]]:
    return [request.body["input"] for request in model.model.requests]


def run_tool_loop(service: RunningService, prompt: str, *, stream: bool) -> dict[str, Any]:
    """What an SDK user writes: call, run the functions asked for, call again."""
    with sdk(service) as client:
        messages: list[Any] = [{"role": "user", "content": prompt}]
        rounds: list[dict[str, Any]] = []
        for _ in range(3):
            completion: Any
            if stream:
                with client.chat.completions.stream(
                    model="scripted-model", messages=messages, tools=TOOLS
                ) as events:
                    for _event in events:
                        pass
                    completion = events.get_final_completion()
            else:
                completion = client.chat.completions.create(
                    model="scripted-model", messages=messages, tools=TOOLS
                )
            choice = completion.choices[0]
            calls = choice.message.tool_calls or []
            rounds.append(
                {
                    "finish": choice.finish_reason,
                    "content": choice.message.content,
                    "calls": [(c.id, c.function.name, c.function.arguments) for c in calls],
                }
            )
            if choice.finish_reason != "tool_calls":
                return {"rounds": rounds, "answer": choice.message.content}
            messages.append(choice.message.model_dump(exclude_none=True))
            for call in calls:
                result = f"{call.function.name} says 42"
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        raise AssertionError(f"no answer after 3 rounds: {rounds}")


@pytest.mark.parametrize("stream", [True, False])
async def test_the_sdk_tool_loop_resumes_the_same_codex_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer, stream: bool
) -> None:
    prompt = "[scenario:client_tool name=get_current_timestamp] What time is it?"
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            loop = await trio.to_thread.run_sync(lambda: run_tool_loop(svc, prompt, stream=stream))
            supervisor = svc.handle.supervisor
            await eventually(lambda: supervisor.status()["active_turns"] == 0)
            await trio.sleep(0.1)  # the last request's metrics are recorded after its last byte
            metrics = (await svc.client.get("/metrics")).text
    # One turn, measured once (by the request it ended in), never as interrupted.
    durations = [line for line in metrics.splitlines() if "turn_duration_seconds_count" in line]
    assert durations == ['codex_bridge_turn_duration_seconds_count{outcome="completed"} 1.0']
    first, second = loop["rounds"]
    assert first["finish"] == "tool_calls"
    [(call_id, name, arguments)] = first["calls"]
    assert (name, arguments) == ("get_current_timestamp", "{}")
    assert second["finish"] == "stop"
    assert loop["answer"] == "Tool results: get_current_timestamp says 42"
    # One codex turn: two model requests, the second with the call and its
    # output — codex's own call id — after the same user message.
    inputs = model_inputs(scripted_model)
    assert len(inputs) == 2
    tools = scripted_model.model.requests[0].body["tools"]
    assert "get_current_timestamp" in {t.get("name") for t in tools}
    calls = [i for i in inputs[1] if i.get("type") == "function_call"]
    outputs = [i for i in inputs[1] if i.get("type") == "function_call_output"]
    assert [c["call_id"] for c in calls] == [call_id]
    assert [(o["call_id"], o["output"]) for o in outputs] == [
        (call_id, "get_current_timestamp says 42")
    ]


async def test_several_calls_of_one_step_come_together_and_codex_commands_still_run(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    prompt = (
        "[scenario:client_tool name=get_current_timestamp,get_weather cmd='echo own-42'] "
        "What time and weather is it?"
    )
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            loop = await trio.to_thread.run_sync(lambda: run_tool_loop(svc, prompt, stream=True))
    first, second = loop["rounds"]
    assert first["finish"] == "tool_calls"
    assert sorted(name for _, name, _ in first["calls"]) == ["get_current_timestamp", "get_weather"]
    # codex's own command ran first, and is shown as today (its card)
    assert "own-42" in (first["content"] or "")
    assert second["finish"] == "stop"
    assert loop["answer"].startswith("Tool results: ")
    assert "get_current_timestamp says 42" in loop["answer"]
    assert "get_weather says 42" in loop["answer"]
    assert len(model_inputs(scripted_model)) == 3  # command, calls, answer: one turn


async def tool_calls_of(service: RunningService, prompt: str, **extra: Any) -> dict[str, Any]:
    answer = await service.client.post(
        "/v1/chat/completions",
        json={
            "model": "scripted-model",
            "messages": [{"role": "user", "content": prompt}],
            "tools": TOOLS,
            **extra,
        },
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def results_for(prompt: str, message: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    return {
        "model": "scripted-model",
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": prompt},
            message,
            *({"role": "tool", "tool_call_id": i, "content": f"result {i[-4:]}"} for i in ids),
        ],
    }


async def test_unknown_and_partial_results_are_refused_and_the_turn_waits_on(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    prompt = "[scenario:client_tool name=get_current_timestamp,get_weather] Time and weather?"
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            body = await tool_calls_of(svc, prompt)
            message = body["choices"][0]["message"]
            ids = [call["id"] for call in message["tool_calls"]]
            assert body["choices"][0]["finish_reason"] == "tool_calls"
            assert message["content"] is None
            post = svc.client.post
            unknown = await post("/v1/chat/completions", json=results_for(prompt, message, ["x"]))
            partial = await post("/v1/chat/completions", json=results_for(prompt, message, ids[:1]))
            done = await post("/v1/chat/completions", json=results_for(prompt, message, ids))
            again = await post("/v1/chat/completions", json=results_for(prompt, message, ids))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "unknown_tool_call")
    assert (partial.status_code, partial.json()["error"]["code"]) == (400, "tool_results_missing")
    assert ids[1] in partial.json()["error"]["message"]
    assert done.status_code == 200
    content = done.json()["choices"][0]["message"]["content"]
    assert content.startswith("Tool results: ")
    parts = content.removeprefix("Tool results: ").split("; ")
    assert sorted(parts) == sorted(f"result {i[-4:]}" for i in ids)
    # answered once: the same results again find no waiting call
    assert (again.status_code, again.json()["error"]["code"]) == (400, "unknown_tool_call")


async def test_a_turn_never_answered_ends_after_the_timeout(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    prompt = "[scenario:client_tool name=get_current_timestamp] What time is it?"
    with trio.fail_after(TIMEOUT_S):
        async with real_service(
            tmp_path, codex_bin, scripted_model, tool_result_timeout_s=1.0
        ) as svc:
            body = await tool_calls_of(svc, prompt)
            message = body["choices"][0]["message"]
            ids = [call["id"] for call in message["tool_calls"]]
            supervisor = svc.handle.supervisor
            assert supervisor.status()["active_turns"] == 1  # parked, holding its child
            await eventually(lambda: supervisor.status()["active_turns"] == 0)
            late = await svc.client.post(
                "/v1/chat/completions", json=results_for(prompt, message, ids)
            )
            after = await svc.client.post(
                "/v1/chat/completions",
                json={"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}]},
            )
    assert (late.status_code, late.json()["error"]["code"]) == (400, "unknown_tool_call")
    assert after.status_code == 200


async def test_client_tools_never_keeps_the_tools_from_codex(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model, client_tools="never") as svc:
            body = await tool_calls_of(svc, "[scenario:plain] hi")
    choice = body["choices"][0]
    assert (choice["finish_reason"], "tool_calls" in choice["message"]) == ("stop", False)
    names = {t.get("name") for t in scripted_model.model.requests[0].body.get("tools") or []}
    assert "get_current_timestamp" not in names
