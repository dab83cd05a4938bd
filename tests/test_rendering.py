"""What a client sees of a whole codex turn: replayed real transcripts
through the HTTP front, with assertions on the exact SSE."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from http_front.blocks import strip_bridge_markup, trim_lines, unwrap_command
from tests.helpers import (
    chat_body,
    content_of,
    fake,
    make_settings,
    recorded,
    replay_launch,
    running_service,
    sse_events,
)

OPENWEBUI = {"X-OpenWebUI-Chat-Id": "4c1f0b9e-0000-4000-8000-000000000001"}


def final_text(name: str) -> str:
    """The agent's final message as codex itself reported it in turn/completed."""
    (done,) = recorded(name, "turn/completed")
    items = [i for i in done["turn"]["items"] if i["type"] == "agentMessage"]
    return str(items[-1]["text"]) if items else ""


async def stream(
    tmp_path: Path, name: str, headers: dict[str, str] | None = None, **settings: Any
) -> list[Any]:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path, **settings), replay_launch(name)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body("go", stream_options={"include_usage": True}),
                headers=headers or {},
            )
    assert response.status_code == 200
    return sse_events(response.content)


async def complete(tmp_path: Path, name: str, **settings: Any) -> Any:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path, **settings), replay_launch(name)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("go", stream=False)
            )
    return response


def statuses(events: list[Any]) -> list[dict[str, Any]]:
    return [e["event"]["data"] for e in events if isinstance(e, dict) and "event" in e]


def errors(events: list[Any]) -> list[dict[str, Any]]:
    return [e["error"] for e in events if isinstance(e, dict) and "error" in e]


def reasoning_of(events: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("reasoning_content", "")
        for c in events
        if isinstance(c, dict) and c.get("choices")
    )


def cards(content: str) -> list[str]:
    return re.findall(r'<details type="tool_calls".*?</details>', content, re.DOTALL)


# -- commands ----------------------------------------------------------------------------


async def test_command_card_then_answer(tmp_path: Path) -> None:
    events = await stream(tmp_path, "exec")
    content = content_of(events)
    (card,) = cards(content)
    assert card.startswith('<details type="tool_calls" done="true" name="shell"')
    assert 'arguments="{&quot;command&quot;:&quot;for i in 1 2 3' in card
    # the wrapper is gone, the output is there, exit code and duration shown
    assert "/bin/bash" not in card
    assert (
        "<summary>Ran `for i in 1 2 3; do echo line-$i; sleep 0.3; done; echo done-42` (exit 0"
        in card
    )
    assert "```console\n$ for i in 1 2 3" in card
    assert "line-1\nline-2\nline-3\ndone-42\n```" in card
    # the card first, then the model's answer on a paragraph of its own
    answer = final_text("exec")
    assert content == card + "\n\n" + answer
    assert errors(events) == []


async def test_command_output_is_trimmed(tmp_path: Path) -> None:
    content = content_of(await stream(tmp_path, "exec", command_output_lines=2))
    assert "… (2 earlier lines not shown)\nline-3\ndone-42\n```" in content
    assert "line-1" not in cards(content)[0].split("<summary>")[1]


async def test_failed_command(tmp_path: Path) -> None:
    content = content_of(await stream(tmp_path, "exec_failing"))
    (card,) = cards(content)
    assert "<summary>Failed (exit 3" in card
    assert "oops" in card


async def test_declined_approval_is_visible(tmp_path: Path) -> None:
    events = await stream(tmp_path, "exec_declined", headers=OPENWEBUI)
    (card,) = cards(content_of(events))
    assert "<summary>Declined by the approval policy (decline): `echo done-42`</summary>" in card
    descriptions = [s["description"] for s in statuses(events)]
    assert "Approval for echo done-42: decline (policy)" in descriptions
    assert "Running `echo done-42`" in descriptions


# -- file changes, reasoning --------------------------------------------------------------


async def test_file_change_card(tmp_path: Path) -> None:
    content = content_of(await stream(tmp_path, "patch"))
    (card,) = cards(content)
    (change,) = recorded("patch", "item/completed")[1]["item"]["changes"]
    assert 'name="apply_patch"' in card
    assert f"<summary>Changed 1 file: {change['path']}</summary>" in card
    assert "```diff\n+hello from the scripted model\n```" in card
    assert content.endswith(final_text("patch"))


async def test_reasoning_as_field_think_or_hidden(tmp_path: Path) -> None:
    parts: dict[int, str] = {}
    for p in recorded("reasoning", "item/reasoning/summaryTextDelta"):
        parts[p["summaryIndex"]] = parts.get(p["summaryIndex"], "") + p["delta"]
    summary = "\n\n".join(parts[i] for i in sorted(parts))
    answer = final_text("reasoning")

    field = await stream(tmp_path / "a", "reasoning")
    assert reasoning_of(field) == summary
    assert content_of(field) == answer

    think = await stream(tmp_path / "b", "reasoning", reasoning_format="think")
    assert reasoning_of(think) == ""
    assert content_of(think) == f"<think>\n{summary}\n</think>\n\n{answer}"

    hidden = await stream(tmp_path / "c", "reasoning", reasoning_format="hidden")
    assert reasoning_of(hidden) == ""
    assert content_of(hidden) == answer


# -- retries, errors, limits ----------------------------------------------------------------


async def test_retried_stream_is_not_shown_twice(tmp_path: Path) -> None:
    events = await stream(tmp_path, "stream_drop", headers=OPENWEBUI)
    streamed = "".join(p["delta"] for p in recorded("stream_drop", "item/agentMessage/delta"))
    answer = final_text("stream_drop")
    assert len(streamed) > len(answer)  # codex really did repeat itself
    assert content_of(events) == answer
    assert any("retrying" in s["description"] for s in statuses(events))
    assert errors(events) == []


async def test_failed_retry_shows_the_text_once_and_the_error(tmp_path: Path) -> None:
    events = await stream(tmp_path, "stream_failed")
    items = [
        p["item"]["text"]
        for p in recorded("stream_failed", "item/completed")
        if p["item"]["type"] == "agentMessage"
    ]
    assert len(items) == 2
    assert items[0] == items[1]  # the same text, sent twice by codex
    assert content_of(events) == items[0]
    (error,) = errors(events)
    assert "scripted response.failed" in error["message"]


@pytest.mark.parametrize(
    ("name", "status", "code", "type_"),
    [
        ("http500", 502, "codex_turn_failed", "server_error"),
        ("http429", 429, "rate_limit_exceeded", "rate_limit_error"),
        ("quota", 429, "insufficient_quota", "insufficient_quota"),
        ("http401", 502, "model_auth_failed", "authentication_error"),
        ("context_length", 400, "context_length_exceeded", "invalid_request_error"),
    ],
)
async def test_upstream_errors_map_to_openai_errors(
    tmp_path: Path, name: str, status: int, code: str, type_: str
) -> None:
    events = await stream(tmp_path / "s", name)
    (error,) = errors(events)
    assert (error["code"], error["type"]) == (code, type_)
    assert events[-3]["choices"][0]["finish_reason"] == "error"
    assert "usage" in events[-2]
    assert events[-1] == "[DONE]"
    response = await complete(tmp_path / "n", name)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_length_limit_finishes_with_length(tmp_path: Path) -> None:
    events = await stream(tmp_path, "incomplete")
    assert errors(events) == []
    assert content_of(events) == "This answer stops before it is finished"
    assert events[-3]["choices"][0]["finish_reason"] == "length"


# -- status lines, keepalive, both forms --------------------------------------------------------


async def test_status_lines_only_for_openwebui_by_default(tmp_path: Path) -> None:
    plain = await stream(tmp_path / "a", "exec")
    assert statuses(plain) == []
    owui = await stream(tmp_path / "b", "exec", headers=OPENWEBUI)
    lines = statuses(owui)
    assert lines[0]["description"].startswith("Running `for i in 1 2 3")
    assert any(s["description"].startswith("Running… line-") for s in lines)
    assert lines[-1] == {"description": "Done", "done": True}
    assert all(not s["done"] for s in lines[:-1])
    forced = await stream(tmp_path / "c", "exec", status_events="never", headers=OPENWEBUI)
    assert statuses(forced) == []


@pytest.mark.parametrize("name", ["exec", "reasoning", "patch", "stream_drop", "exec_declined"])
async def test_non_streaming_shows_the_same_as_streaming(tmp_path: Path, name: str) -> None:
    events = await stream(tmp_path / "s", name)
    body = (await complete(tmp_path / "n", name)).json()
    message = body["choices"][0]["message"]
    assert message["content"] == content_of(events)
    assert message.get("reasoning_content", "") == reasoning_of(events)
    assert body["usage"] == events[-2]["usage"]


async def test_keepalive_while_the_agent_is_silent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keepalive_interval_s=0.1)
    with trio.fail_after(30):
        async with running_service(settings, fake("hang-turn", 1)) as svc:
            received = b""
            with trio.move_on_after(0.55):
                async with svc.client.stream(
                    "POST", "/v1/chat/completions", json=chat_body("x", model="fake-model")
                ) as response:
                    assert response.headers["cache-control"] == "no-cache"
                    assert response.headers["x-accel-buffering"] == "no"
                    async for chunk in response.aiter_raw():
                        received += chunk
    assert received.startswith(b": keepalive\n\n")
    # one at once, then one per 0.1 s of silence after the single delta
    assert received.count(b": keepalive\n\n") >= 4


# -- markup in history --------------------------------------------------------------------------


def test_bridge_markup_is_stripped_from_history() -> None:
    from http_front.blocks import command_block, plan_block

    card = command_block(
        command="/bin/bash -lc 'ls'",
        status="completed",
        exit_code=0,
        duration_ms=3,
        output="a\nb\n",
        output_lines=20,
    )
    text = (
        "<think>\nplanning\n</think>\n\n"
        + card
        + "Here is the answer.\n\n"
        + plan_block([("step", "completed")], None)
        + "Done."
    )
    assert strip_bridge_markup(text) == "Here is the answer.\n\nDone."
    assert strip_bridge_markup("no markup <b>kept</b>") == "no markup <b>kept</b>"


def test_block_helpers() -> None:
    assert unwrap_command("/bin/bash -lc 'echo \"hi there\"'") == 'echo "hi there"'
    assert unwrap_command("/usr/bin/zsh -c ls") == "ls"
    assert unwrap_command("python -c 1") == "python -c 1"
    assert unwrap_command("bash -lc 'unterminated") == "bash -lc 'unterminated"
    assert trim_lines("1\n2\n3\n", 2) == "… (1 earlier line not shown)\n2\n3"
    assert trim_lines("1\n2\n", 5) == "1\n2"
    from http_front.blocks import command_block

    tricky = command_block(
        command="cat x",
        status="completed",
        exit_code=0,
        duration_ms=None,
        output="```\ninside\n```\n",
        output_lines=10,
    )
    assert "````console" in tricky  # a longer fence than any run inside


async def test_a_whole_agent_turn_in_order(tmp_path: Path) -> None:
    """Reasoning, then the command's card, then the answer; status lines around."""
    events = await stream(tmp_path, "agent_at_work", headers=OPENWEBUI)
    kinds: list[str] = []
    for event in events:
        if event == "[DONE]":
            kind = "done"
        elif "event" in event:
            kind = "status"
        elif "error" in event:
            kind = "error"
        elif not event["choices"]:
            kind = "usage"
        else:
            delta = event["choices"][0]["delta"]
            kind = (
                "role"
                if "role" in delta
                else "reasoning"
                if delta.get("reasoning_content")
                else "content"
                if delta.get("content")
                else "finish"
            )
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    assert kinds[0] == "role"
    assert kinds[-3:] == ["finish", "usage", "done"]
    first = {k: kinds.index(k) for k in ("reasoning", "content")}
    assert first["reasoning"] < first["content"]
    content = content_of(events)
    (card,) = cards(content)
    assert content.startswith(card)  # the card comes before any answer text
    assert content.endswith(final_text("agent_at_work"))
    assert "Thinking…" in [s["description"] for s in statuses(events)]


async def test_abort_while_queued_leaves_the_queue(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_turns_per_child=1, queue_size=5, queue_timeout_s=30)
    with trio.fail_after(30):
        async with running_service(settings, fake("hang-turn")) as svc:
            mux = svc.handle.multiplexer
            async with svc.client.stream(
                "POST", "/v1/chat/completions", json=chat_body("first", model="fake-model")
            ) as first:
                chunks = first.aiter_bytes()  # kept: dropping it would close the stream
                await chunks.__anext__()  # the first turn runs, and never ends
                async with httpx.AsyncClient(base_url=svc.url) as other:
                    with trio.move_on_after(0.3):
                        await other.post(
                            "/v1/chat/completions", json=chat_body("second", model="fake-model")
                        )
                    assert mux.queued <= 1
                # the second client gave up while queued
                while mux.queued:
                    await svc.handle.pool.wait_changed()
                assert svc.handle.pool.children[0].turns_served == 0
                assert mux.active_turns == 1
                del chunks
            while mux.active_turns:
                await svc.handle.pool.wait_changed()
