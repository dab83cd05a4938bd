"""``/v1/responses`` over HTTP, against transcripts recorded from the real binary.

Expected texts are read from the transcripts, never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from openai.types.responses import Response

from tests.helpers import make_settings, recorded, replay_launch, running_service, sse_events

TIMEOUT_S = 30


def recorded_text(name: str) -> str:
    return "".join(p["delta"] for p in recorded(name, "item/agentMessage/delta"))


def recorded_usage(name: str) -> dict[str, int]:
    total = recorded(name, "thread/tokenUsage/updated")[-1]["tokenUsage"]["total"]
    return {"input_tokens": total["inputTokens"], "output_tokens": total["outputTokens"]}


async def post(tmp_path: Path, name: str, **body: Any) -> httpx.Response:
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), replay_launch(name)) as svc:
            return await svc.client.post("/v1/responses", json={"input": "hi", **body})


def final_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[1]["type"] == "response.in_progress"
    terminal = [
        e
        for e in events
        if e["type"] in ("response.completed", "response.failed", "response.incomplete")
    ]
    assert len(terminal) == 1
    assert terminal[0] is events[-1]
    return dict(events[-1]["response"])


def shape(response: dict[str, Any]) -> tuple[Any, ...]:
    """What a streamed and a whole response must agree on (ids and times aside)."""
    Response.model_validate(response)
    return (
        response["status"],
        [item["type"] for item in response["output"]],
        Response.model_validate(response).output_text,
        response["usage"],
    )


@pytest.mark.parametrize("name", ["plain", "reasoning", "exec", "patch"])
async def test_streamed_and_whole_agree_with_the_recording(tmp_path: Path, name: str) -> None:
    streamed = await post(tmp_path / "s", name, stream=True)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.content)
    final = final_of(events)
    whole = await post(tmp_path / "w", name)
    assert whole.status_code == 200
    assert shape(final) == shape(whole.json())
    assert final["status"] == "completed"
    assert Response.model_validate(final).output_text == recorded_text(name)
    usage = final["usage"]
    assert {k: usage[k] for k in ("input_tokens", "output_tokens")} == recorded_usage(name)
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == recorded_text(name)


async def test_reasoning_summary_events_carry_the_recorded_summary(tmp_path: Path) -> None:
    response = await post(tmp_path, "reasoning", stream=True, reasoning={"effort": "low"})
    events = sse_events(response.content)
    parts: dict[int, str] = {}
    for p in recorded("reasoning", "item/reasoning/summaryTextDelta"):
        parts[p["summaryIndex"]] = parts.get(p["summaryIndex"], "") + p["delta"]
    done = [e["text"] for e in events if e["type"] == "response.reasoning_summary_text.done"]
    assert done == [parts[i] for i in sorted(parts)]
    added = [e for e in events if e["type"] == "response.reasoning_summary_part.added"]
    assert [e["summary_index"] for e in added] == list(range(len(parts)))
    reasoning = final_of(events)["output"][0]
    assert reasoning["type"] == "reasoning"
    assert [s["text"] for s in reasoning["summary"]] == done


async def test_a_command_is_a_shell_call_with_its_output(tmp_path: Path) -> None:
    response = await post(tmp_path, "exec")
    output = response.json()["output"]
    (command,) = [
        p for p in recorded("exec", "item/completed") if p["item"]["type"] == "commandExecution"
    ]
    calls = [i for i in output if i["type"] == "shell_call"]
    outputs = [i for i in output if i["type"] == "shell_call_output"]
    assert len(calls) == len(outputs) == 1
    assert outputs[0]["call_id"] == calls[0]["call_id"]
    assert outputs[0]["output"][0]["stdout"] == command["item"]["aggregatedOutput"]
    assert outputs[0]["output"][0]["outcome"] == {
        "type": "exit",
        "exit_code": command["item"]["exitCode"],
    }
    assert calls[0]["action"]["commands"][0] in command["item"]["command"]


async def test_a_patch_is_an_apply_patch_call(tmp_path: Path) -> None:
    response = await post(tmp_path, "patch")
    output = response.json()["output"]
    (change,) = [
        p for p in recorded("patch", "item/completed") if p["item"]["type"] == "fileChange"
    ]
    calls = [i for i in output if i["type"] == "apply_patch_call"]
    assert [c["operation"]["path"] for c in calls] == [c["path"] for c in change["item"]["changes"]]
    assert calls[0]["operation"]["type"] == "create_file"
    assert calls[0]["operation"]["diff"] == change["item"]["changes"][0]["diff"]
    results = [i for i in output if i["type"] == "apply_patch_call_output"]
    assert [r["status"] for r in results] == ["completed"] * len(calls)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("http500", 502, "codex_turn_failed"), ("context_length", 400, "context_length_exceeded")],
)
async def test_a_failed_turn(tmp_path: Path, name: str, status: int, code: str) -> None:
    final_error = [p for p in recorded(name, "error") if not p["willRetry"]][-1]
    streamed = await post(tmp_path / "s", name, stream=True)
    assert streamed.status_code == 200  # the stream had started
    final = final_of(sse_events(streamed.content))
    assert final["status"] == "failed"
    assert final["error"] == {"code": code, "message": final_error["error"]["message"]}
    whole = await post(tmp_path / "w", name)
    assert whole.status_code == status
    assert whole.json()["error"]["code"] == code


async def test_get_delete_and_unknown_ids(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            created = (await svc.client.post("/v1/responses", json={"input": "hi"})).json()
            got = await svc.client.get(f"/v1/responses/{created['id']}")
            assert got.status_code == 200
            assert got.json() == created
            deleted = await svc.client.delete(f"/v1/responses/{created['id']}")
            assert deleted.json() == {
                "id": created["id"],
                "object": "response.deleted",
                "deleted": True,
            }
            gone = await svc.client.get(f"/v1/responses/{created['id']}")
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "not_found"
            again = await svc.client.delete(f"/v1/responses/{created['id']}")
            assert again.status_code == 404
            unknown = await svc.client.post(
                "/v1/responses", json={"input": "hi", "previous_response_id": "resp_nope"}
            )
            assert unknown.status_code == 404
            assert unknown.json()["error"] == {
                "message": "Previous response with id 'resp_nope' not found.",
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": "previous_response_not_found",
            }
            continued = await svc.client.post(
                "/v1/responses", json={"input": "hi", "previous_response_id": created["id"]}
            )
            assert continued.status_code == 404  # deleted: it cannot be continued
            nested = await svc.client.get(f"/v1/responses/{created['id']}/input_items")
            assert nested.status_code == 404


async def test_store_false_keeps_nothing(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            created = (
                await svc.client.post("/v1/responses", json={"input": "hi", "store": False})
            ).json()
            assert created["store"] is False
            assert created["status"] == "completed"
            got = await svc.client.get(f"/v1/responses/{created['id']}")
            assert got.status_code == 404
    scratch = tmp_path / "workspace" / "scratch"  # make_settings' workspace_dir
    assert not scratch.exists() or not any(scratch.iterdir())
    assert not (tmp_path / "workspace" / "responses").exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "background": True}, "background"),
        # a result of a call no turn waits on
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "o"}]}, "input"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({}, "input"),
    ],
)
async def test_bad_requests_are_openai_errors(
    tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with running_service(make_settings(tmp_path), replay_launch("plain")) as svc:
            response = await svc.client.post("/v1/responses", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
