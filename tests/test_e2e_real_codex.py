"""End to end: HTTP → service → pool of real codex children → scripted model.

Clients are the `openai` SDK (streaming and not) and raw httpx SSE parsing.
Every test ends by stopping the service and checking that no child process
survived it (tests.helpers.running_service).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from fixtures.scenarios import DROP_TEXT, PLAIN_TEXT
from fixtures.scripted_model import ScriptedModelServer
from supervisor.reaper import descendants
from tests.helpers import (
    RunningService,
    chat_body,
    content_of,
    real_service,
    sse_events,
)

pytestmark = pytest.mark.real_codex

TIMEOUT_S = 60


def sdk(service: RunningService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


async def test_streaming_with_the_openai_sdk(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:

            def run() -> list[Any]:
                stream = sdk(svc).chat.completions.create(
                    model="scripted-model",
                    messages=[{"role": "user", "content": "[scenario:words n=30] count"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                return list(stream)

            chunks = await trio.to_thread.run_sync(run)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"w{i}" for i in range(1, 31)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    (request,) = scripted_model.model.requests
    # the scripted model counts one output token per delta, and derives the
    # prompt tokens from the body codex sent it (44 KB of codex's own prompt)
    assert usage.completion_tokens == 30
    assert usage.prompt_tokens > 1000
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert request.scenario == "words"


async def test_non_streaming_with_the_openai_sdk(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:

            def run() -> Any:
                return sdk(svc).chat.completions.create(
                    model="scripted-model",
                    messages=[
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "[scenario:plain] hello"},
                    ],
                )

            completion = await trio.to_thread.run_sync(run)
    assert completion.choices[0].message.content == PLAIN_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    # the system message reached the model as a developer message
    body = scripted_model.model.requests[0].body
    developer = [
        part["text"]
        for item in body["input"]
        if item.get("role") == "developer"
        for part in item["content"]
    ]
    assert any("Be brief." in text for text in developer)


async def test_history_is_replayed_to_the_model(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    messages = [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "[scenario:plain] what is my name?"},
    ]
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json={"model": "scripted-model", "stream": True, "messages": messages},
            )
    assert content_of(sse_events(response.content)) == PLAIN_TEXT
    (request,) = scripted_model.model.requests
    texts = [
        (item["role"], part["text"])
        for item in request.body["input"]
        if item.get("type") == "message" and item.get("role") in ("user", "assistant")
        for part in item["content"]
        if not part["text"].startswith("<")  # codex's own <environment_context>
    ]
    assert texts == [
        ("user", "my name is Ada"),
        ("assistant", "Nice to meet you, Ada."),
        ("user", "[scenario:plain] what is my name?"),
    ]


async def test_raw_sse_stream(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("[scenario:words n=12] go")
            )
    assert response.status_code == 200
    assert response.text.startswith(": keepalive\n\n")
    events = sse_events(response.content)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert content_of(events).split() == [f"w{i}" for i in range(1, 13)]
    assert all("usage" not in e for e in events[:-1])


async def test_client_disconnect_interrupts_the_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    model = scripted_model.model
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            cut_before = model.streams_cut_by_client
            deltas = 0
            async with svc.client.stream(
                "POST",
                "/v1/chat/completions",
                json=chat_body("[scenario:slow deltas=100 delay_ms=50] a long story"),
            ) as response:
                async for line in response.aiter_lines():
                    if '"content":"w' in line or (
                        '"content":"' in line and '"content":""' not in line
                    ):
                        deltas += 1
                        if deltas == 2:
                            break
            # the bridge interrupts the turn; codex drops the model stream
            await model.wait_stream_cut(cut_before)
            assert model.streams_finished == 0
            child = svc.handle.pool.children[0]
            while svc.handle.multiplexer.load(child):
                await svc.handle.pool.wait_changed()
            assert child.usable
            # the child is healthy: the next request is served normally
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("[scenario:plain] again", stream=False)
            )
            assert response.json()["choices"][0]["message"]["content"] == PLAIN_TEXT


async def test_concurrent_streams_spread_over_the_pool(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    results: dict[int, str] = {}
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model, pool_size=2) as svc:

            async def one(i: int) -> None:
                response = await svc.client.post(
                    "/v1/chat/completions",
                    json=chat_body(f"[scenario:slow deltas=8 delay_ms=40] request {i}"),
                )
                results[i] = content_of(sse_events(response.content))

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(one, i)
            served = [c.turns_served for c in svc.handle.pool.children]
    assert all(text.split() == [f"w{n}" for n in range(1, 9)] for text in results.values())
    assert len(results) == 6
    assert sorted(served) == [3, 3]  # least busy first


async def test_models_come_from_codex(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            models = (await svc.client.get("/v1/models")).json()
            unknown = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", model="gpt-unknown")
            )
    assert [m["id"] for m in models["data"]] == ["scripted-model"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert scripted_model.model.requests == []


@pytest.mark.parametrize("stream", [True, False])
async def test_without_credentials_a_request_gets_a_clear_error(
    tmp_path: Path, codex_bin: Path, stream: bool
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, None) as svc:
            health = await svc.client.get("/healthz")
            response = await svc.client.post(
                "/v1/chat/completions",
                json={"stream": stream, "messages": [{"role": "user", "content": "hi"}]},
            )
    assert health.status_code == 200  # the service itself is up
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "codex_not_authenticated"
    assert "codex-bridge login --codex-home" in error["message"]
    assert str(tmp_path / "codex-home") in error["message"]


@pytest.mark.parametrize(
    ("policy", "expect_in_output"), [("decline", "rejected"), ("accept", "done-42")]
)
async def test_approval_requests_are_answered_by_policy(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    policy: str,
    expect_in_output: str,
) -> None:
    """The model asks for an escalated command; nobody clicks "approve", so
    the configured policy answers and the turn goes on instead of waiting."""
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model, approval_policy=policy) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                # login=0: a plain shell, so the host's login scripts stay out of it
                json=chat_body("[scenario:exec_escalated login=0] run it", stream=False),
            )
    assert response.status_code == 200
    requests = scripted_model.model.requests
    assert [r.step for r in requests] == [0, 1]
    outputs = [
        item["output"]
        for item in requests[1].body["input"]
        if item.get("type") == "function_call_output"
    ]
    assert len(outputs) == 1
    assert expect_in_output in str(outputs[0])
    content = response.json()["choices"][0]["message"]["content"]
    assert 'name="shell"' in content  # the command's card
    assert ("Declined by the approval policy" in content) == (policy == "decline")
    assert "Ran `echo done-42`. Output:" in content  # the answer after the card


async def test_real_child_killed_mid_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """kill -9 of a real codex mid-stream: the client gets a terminal error, the
    pool replaces the child, the next request is served, nothing is left over."""
    with trio.fail_after(TIMEOUT_S):
        async with real_service(
            tmp_path, codex_bin, scripted_model, restart_backoff_initial_s=0.05
        ) as svc:
            pool = svc.handle.pool
            victim = pool.children[0]
            lines: list[str] = []
            async with svc.client.stream(
                "POST",
                "/v1/chat/completions",
                json=chat_body(
                    "[scenario:slow deltas=100 delay_ms=50] story",
                    stream_options={"include_usage": True},
                ),
            ) as response:
                deltas = 0
                async for line in response.aiter_lines():
                    lines.append(line)
                    if '"content":"w' in line:
                        deltas += 1
                        if deltas == 2:
                            assert victim.pid is not None
                            os.kill(victim.pid, signal.SIGKILL)
            while not pool.live or pool.slots[0] is victim:
                await pool.wait_changed()
            again = await svc.client.post(
                "/v1/chat/completions", json=chat_body("[scenario:plain] hi", stream=False)
            )
    events = sse_events("\n".join(lines).encode())
    (error,) = [e for e in events if isinstance(e, dict) and "error" in e]
    assert error["error"]["code"] == "codex_exited"
    assert "SIGKILL" in error["error"]["message"]
    assert events[-3]["choices"][0]["finish_reason"] == "error"
    assert events[-2]["choices"] == []
    assert events[-1] == "[DONE]"
    assert again.status_code == 200
    assert again.json()["choices"][0]["message"]["content"] == PLAIN_TEXT
    assert "killed by SIGKILL" in (victim.exit_reason or "")


# -- the whole turn, rendered (real binary) -------------------------------------------------

OPENWEBUI = {"X-OpenWebUI-Chat-Id": "4c1f0b9e-0000-4000-8000-000000000002"}


async def test_command_with_streamed_output(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    marker = '[scenario:exec login=0 cmd="for i in 1 2 3; do echo out-$i; sleep 0.2; done"] go'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body(marker), headers=OPENWEBUI
            )
    events = sse_events(response.content)
    content = content_of(events)
    assert content.startswith('<details type="tool_calls" done="true" name="shell"')
    assert "<summary>Ran `for i in 1 2 3; do echo out-$i; sleep 0.2; done` (exit 0" in content
    assert "out-1\nout-2\nout-3\n```" in content
    assert "</details>\n\nRan `for i in 1 2 3" in content  # then the model's answer
    lines = [e["event"]["data"] for e in events if isinstance(e, dict) and "event" in e]
    assert any(line["description"].startswith("Running… out-") for line in lines)
    assert lines[-1] == {"description": "Done", "done": True}


async def test_reasoning_end_to_end(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body("[scenario:reasoning] think", reasoning_effort="high", stream=False),
            )
    message = response.json()["choices"][0]["message"]
    assert message["reasoning_content"].count("\n\n") == 1  # two summary parts
    assert message["content"]
    body = scripted_model.model.requests[0].body
    assert body["reasoning"]["effort"] == "high"
    assert body["reasoning"]["summary"] == "auto"  # asked for, so there is something to show


async def test_dropped_stream_retry_is_not_duplicated(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("[scenario:stream_drop] tell me")
            )
    assert [r.attempt for r in scripted_model.model.requests] == [1, 2]
    events = sse_events(response.content)
    assert content_of(events) == DROP_TEXT
    assert not [e for e in events if isinstance(e, dict) and "error" in e]


def _running_command(root: int, argv: bytes) -> list[int]:
    """Descendants of ``root`` whose argv contains ``argv`` (NUL-separated)."""
    found = []
    for pid in descendants(root):
        try:
            if argv in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


async def test_abort_during_a_command(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """The client leaves while codex runs a long command: the turn is interrupted,
    the command's process dies with it, the child serves the next request."""
    marker = '[scenario:exec login=0 cmd="echo started; sleep 30; echo never"] go'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            child = svc.handle.pool.children[0]
            async with svc.client.stream(
                "POST", "/v1/chat/completions", json=chat_body(marker), headers=OPENWEBUI
            ) as response:
                async for line in response.aiter_lines():
                    if "Running `echo started; sleep 30" in line:
                        break  # the command runs: hang up
            while child.load:
                await svc.handle.pool.wait_changed()
            assert child.usable
            again = await svc.client.post(
                "/v1/chat/completions", json=chat_body("[scenario:plain] hi", stream=False)
            )
            assert again.json()["choices"][0]["message"]["content"] == PLAIN_TEXT
            # no `sleep 30` left running under the child
            assert (
                await trio.to_thread.run_sync(_running_command, child.pid or 0, b"sleep\x0030")
                == []
            )


async def test_rendered_answer_sent_back_never_reaches_the_model_as_markup(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    first = '[scenario:exec login=0 cmd="echo hi"] run it'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(
            tmp_path, codex_bin, scripted_model, reasoning_format="think"
        ) as svc:
            answer = await svc.client.post(
                "/v1/chat/completions", json=chat_body(first, stream=False)
            )
            rendered = answer.json()["choices"][0]["message"]["content"]
            assert "<details" in rendered
            history = [
                {"role": "user", "content": first},
                {"role": "assistant", "content": "<think>\nmusing\n</think>\n\n" + rendered},
                {"role": "user", "content": "[scenario:plain] and now?"},
            ]
            await svc.client.post(
                "/v1/chat/completions",
                json={"model": "scripted-model", "messages": history, "stream": False},
            )
    last = scripted_model.model.requests[-1].body
    assistant = [
        part["text"]
        for item in last["input"]
        if item.get("role") == "assistant"
        for part in item["content"]
    ]
    assert assistant == ["Ran `echo hi`. Output: hi"]
    sent = str(last["input"])
    assert "<details" not in sent
    assert "<think>" not in sent
    assert "musing" not in sent
