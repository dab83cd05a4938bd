"""The client's functions through the Responses API and real codex children,
with the official openai SDK's Responses tool loop: the model calls
functions, the response completes with ``function_call`` items while the codex
turn waits parked, and the next request — bringing ``function_call_output``
items, after ``previous_response_id`` or in the client's own history — is
answered with the rest of the same codex turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import RunningService, real_service
from tests.test_client_tools_real_codex import model_inputs, sdk

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 90
MODEL = "scripted-model"
TWO_CALLS = "[scenario:client_tool name=get_current_timestamp,get_weather] What time and weather?"


def function(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": f"The {name.replace('_', ' ')}.",
        "parameters": {"type": "object", "properties": {}},
    }


TOOLS: Any = [function("get_current_timestamp"), function("get_weather")]


def create(client: openai.OpenAI, *, stream: bool, **body: Any) -> Any:
    """One response, streamed through the SDK's helper or whole."""
    if not stream:
        return client.responses.create(model=MODEL, tools=TOOLS, **body)
    with client.responses.stream(model=MODEL, tools=TOOLS, **body) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    if calls:  # each call's arguments streamed and done
        assert kinds.count("response.function_call_arguments.done") == len(calls)
    return final


def results(response: Any) -> list[dict[str, Any]]:
    """What an SDK user's functions return, as function_call_output items."""
    return [
        {"type": "function_call_output", "call_id": item.call_id, "output": f"{item.name} says 42"}
        for item in response.output
        if item.type == "function_call"
    ]


def run_loop(service: RunningService, *, stream: bool, own_history: bool) -> tuple[list[Any], Any]:
    """The SDK's Responses tool loop: create, run the functions asked for,
    create again (after previous_response_id, or with the whole history)."""
    with sdk(service) as client:
        history: list[Any] = [{"role": "user", "content": TWO_CALLS}]
        responses = [create(client, stream=stream, input=history)]
        for _ in range(3):
            last = responses[-1]
            if not any(item.type == "function_call" for item in last.output):
                return responses, None
            if own_history:
                history += [item.model_dump(exclude_none=True) for item in last.output]
                history += results(last)
                responses.append(create(client, stream=stream, input=history))
            else:
                responses.append(
                    create(client, stream=stream, input=results(last), previous_response_id=last.id)
                )
        raise AssertionError(f"no answer after 3 rounds: {responses}")


def check_one_codex_turn(model: ScriptedModelServer, call_ids: list[str]) -> None:
    """Two model requests: the second carries codex's calls and their outputs."""
    inputs = model_inputs(model)
    assert len(inputs) == 2
    offered = {tool.get("name") for tool in model.model.requests[0].body["tools"]}
    assert {"get_current_timestamp", "get_weather"} <= offered
    calls = {i["call_id"]: i["name"] for i in inputs[1] if i.get("type") == "function_call"}
    outputs = {
        i["call_id"]: i["output"] for i in inputs[1] if i.get("type") == "function_call_output"
    }
    assert sorted(calls) == sorted(call_ids)
    assert outputs == {call: f"{name} says 42" for call, name in calls.items()}


@pytest.mark.parametrize("stream", [True, False])
async def test_the_sdk_tool_loop_resumes_the_same_codex_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer, stream: bool
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            (first, second), _ = await trio.to_thread.run_sync(
                lambda: run_loop(svc, stream=stream, own_history=False)
            )
            await trio.sleep(0.2)
            assert svc.handle.supervisor.status()["active_turns"] == 0
            stored = (await svc.client.get(f"/v1/responses/{second.id}")).json()
    # Several calls of one step end one response, completed, as OpenAI's do.
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    # (in the order codex asks for them: it runs a step's calls concurrently)
    assert sorted((c.name, c.arguments, c.status) for c in calls) == [
        ("get_current_timestamp", "{}", "completed"),
        ("get_weather", "{}", "completed"),
    ]
    assert second.status == "completed"
    assert second.previous_response_id == first.id
    assert second.output_text == (
        "Tool results: get_current_timestamp says 42; get_weather says 42"
    )
    assert stored["output"][-1]["content"][0]["text"] == second.output_text
    check_one_codex_turn(scripted_model, [c.call_id for c in calls])


async def test_a_client_keeping_its_own_history_resumes_by_call_ids(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            (first, second), _ = await trio.to_thread.run_sync(
                lambda: run_loop(svc, stream=True, own_history=True)
            )
    assert second.previous_response_id is None
    assert second.output_text.startswith("Tool results: get_current_timestamp says 42")
    check_one_codex_turn(
        scripted_model, [item.call_id for item in first.output if item.type == "function_call"]
    )


async def test_the_chain_goes_on_after_a_tool_round_trip(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    def loop_then_more() -> tuple[Any, Any, Any]:
        (first, second), _ = run_loop(svc, stream=False, own_history=False)
        with sdk(svc) as client:
            third = client.responses.create(
                model=MODEL,
                tools=TOOLS,
                input="[scenario:plain text=noted] And now?",
                previous_response_id=second.id,
            )
        return first, second, third

    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            *_, third = await trio.to_thread.run_sync(loop_then_more)
    assert third.output_text == "noted"
    # The same codex thread: its third model request has the first turn's
    # question, calls and outputs before the new question.
    inputs = model_inputs(scripted_model)
    assert len(inputs) == 3
    kinds = [item.get("type") for item in inputs[2]]
    assert kinds.count("function_call") == 2
    assert kinds.count("function_call_output") == 2
    texts = [
        part.get("text", "")
        for item in inputs[2]
        if item.get("role") == "user"
        for part in item.get("content") or ()
    ]
    assert texts.index(TWO_CALLS) < texts.index("[scenario:plain text=noted] And now?")


async def test_unknown_or_missing_results_are_400(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    def refusals() -> tuple[list[openai.BadRequestError], Any]:
        errors: list[openai.BadRequestError] = []
        with sdk(svc) as client:
            first = client.responses.create(model=MODEL, tools=TOOLS, input=TWO_CALLS)
            answers: Any = results(first)
            bodies: list[dict[str, Any]] = [
                # a call no turn waits on
                {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "o"}]},
                # only one of the step's two calls answered, by the history
                {"input": [{"role": "user", "content": TWO_CALLS}, answers[0]]},
                # the previous response's calls unanswered
                {"input": "next question", "previous_response_id": first.id},
            ]
            for body in bodies:
                with pytest.raises(openai.BadRequestError) as caught:
                    client.responses.create(model=MODEL, tools=TOOLS, **body)
                errors.append(caught.value)
            # still parked: the right results finish it
            final = client.responses.create(
                model=MODEL, tools=TOOLS, input=answers, previous_response_id=first.id
            )
        return errors, final

    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            errors, final = await trio.to_thread.run_sync(refusals)
    unknown, missing, unanswered = (error.body for error in errors)
    assert isinstance(unknown, dict)
    assert isinstance(missing, dict)
    assert isinstance(unanswered, dict)
    assert (unknown["code"], unknown["param"]) == ("unknown_tool_call", "input")
    assert (missing["code"], missing["param"]) == ("tool_results_missing", "input")
    assert unanswered["param"] == "input"
    assert unanswered["message"].startswith("No tool output found for function call call_")
    assert final.output_text == "Tool results: get_current_timestamp says 42; get_weather says 42"
