"""A real OpenWebUI 0.12.4 in front of the service, driven as its web UI drives it.

OpenWebUI (one for the run, tests/e2e_openwebui/conftest.py) talks to the
service's /v1 with an API key, through a recording proxy (what it sent
upstream, and what it got back); the service runs real codex children against
the scripted model. Each message goes in as the web UI sends it: a socket.io
session, then ``POST /api/chat/completions`` with its id, so OpenWebUI attaches
its built-in tools, runs the ones the model calls and stores the chat.

With ``CODEX_BRIDGE_SCREENSHOT=<path>`` the tool-call chat, as Chromium shows
it, is saved there (the README's docs/openwebui-tool-call.png).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from fixtures.scenarios import PLAIN_TEXT, is_injected_user_text, user_messages
from fixtures.scripted_model import RecordedRequest, ScriptedModelServer
from http_front.access import ApiKey
from tests.cdp import chromium_binary, open_chromium
from tests.e2e_openwebui.openwebui import (
    API_KEY,
    Exchange,
    OpenWebUIServer,
    RecordingProxy,
    Sent,
    WebUI,
    open_webui,
    recording_proxy,
)
from tests.helpers import real_service

pytestmark = pytest.mark.real_codex

MODEL = "scripted-model"
TOOL = "get_current_timestamp"
TOOL_PROMPT = f"[scenario:client_tool name={TOOL}] What time is it?"
#: Marks, for a click, the card OpenWebUI draws for a finished call of TOOL.
MARK_TOOL_CARD = f"""(() => {{
  const card = Array.from(document.querySelectorAll('[role=button]'))
    .find((e) => e.innerText.includes('View Result from {TOOL}'));
  card?.setAttribute('data-tool-card', '');
  return Boolean(card);
}})()"""
#: Resolves once the page's fonts are loaded and its finite animations (the
#: card opening) have run or been cancelled.
SETTLED = """document.fonts.ready
  .then(() => Promise.all(document.getAnimations()
    .filter((a) => a.effect?.getComputedTiming().endTime !== Infinity)
    .map((a) => a.finished.catch(() => null))))
  .then(() => true)"""
#: One message's round trip: OpenWebUI, the bridge, codex, the scripted model.
MESSAGE_TIMEOUT_S = 45


@attrs.frozen
class Stack:
    webui: WebUI
    proxy: RecordingProxy


@asynccontextmanager
async def stack(
    tmp_path: Path,
    codex_bin: Path,
    model: ScriptedModelServer,
    openwebui: OpenWebUIServer,
    **settings: Any,
) -> AsyncIterator[Stack]:
    """The service (real codex, the scripted model, OpenWebUI's key) behind
    the recording proxy at OpenWebUI's upstream port, and a web UI session."""
    keys = (ApiKey.from_secret("openwebui", API_KEY),)
    async with (
        real_service(tmp_path, codex_bin, model, api_keys=keys, **settings) as service,
        recording_proxy(openwebui.upstream_port, service.url) as proxy,
        open_webui(openwebui) as webui,
    ):
        yield Stack(webui, proxy)


def describe(exchanges: list[Exchange]) -> str:
    """What went upstream and came back, for a failing assertion's message
    (tools by name only: OpenWebUI sends 28 of them)."""
    lines = []
    for e in exchanges:
        shown: Any = e.json()
        if isinstance(shown, dict) and "tools" in shown:
            shown = {**shown, "tools": tool_names(shown)}
        lines.append(f"{e.method} {e.path} -> {e.status}")
        lines.append(f"  request: {orjson.dumps(shown)[:3000]!r}")
        lines.append(f"  response: {bytes(e.response)[:3000]!r}")
    return "\n".join(lines)


def tool_names(body: dict[str, Any]) -> list[str]:
    """The names of the functions a chat request offers."""
    return [tool["function"]["name"] for tool in body.get("tools") or []]


def model_tool_names(body: dict[str, Any]) -> list[str]:
    """The names of the tools codex offered the scripted model (Responses shape)."""
    return [str(tool.get("name")) for tool in body.get("tools") or []]


async def send(stack: Stack, text: str, *, after: Sent | None = None) -> Sent:
    """Send ``text`` in a new chat, or in ``after``'s chat answering it."""
    with trio.fail_after(MESSAGE_TIMEOUT_S):
        if after is None:
            return await stack.webui.send(MODEL, text)
        return await stack.webui.send(
            MODEL, text, chat_id=after.chat_id, parent_id=after.assistant_message_id
        )


async def test_plain_message_is_answered_once(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    openwebui: OpenWebUIServer,
) -> None:
    async with stack(tmp_path, codex_bin, scripted_model, openwebui) as s:
        sent = await send(s, "[scenario:plain] hi")
        message = await s.webui.message(sent)
        chats = s.proxy.chats()
    context = describe(s.proxy.exchanges)
    assert message["done"] is True, context
    assert "error" not in message, (message, context)
    assert message["content"] == PLAIN_TEXT, context
    assert [item["type"] for item in message["output"]] == ["message"]
    (chat,) = chats  # one user turn went upstream
    body = chat.json()
    # the web UI's path: streamed, its built-in tools offered, the chat named
    assert body["stream"] is True
    assert TOOL in tool_names(body), context
    assert chat.headers["x-openwebui-chat-id"] == sent.chat_id
    assert chat.headers["authorization"] == f"Bearer {API_KEY}"
    assert body["messages"] == [{"role": "user", "content": "[scenario:plain] hi"}]
    answered = answer_of(chat)
    assert (answered.text, answered.calls, answered.finishes) == (PLAIN_TEXT, [], ["stop"])


async def test_openwebui_runs_its_tool_for_the_model(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    openwebui: OpenWebUIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chromium_binary()  # fails at once, and says why, without Debian's chromium
    shot = os.environ.get("CODEX_BRIDGE_SCREENSHOT")
    monkeypatch.delenv("CODEX_BRIDGE_SCREENSHOT", raising=False)
    async with stack(tmp_path, codex_bin, scripted_model, openwebui) as s:
        before = int(time.time())
        sent = await send(s, TOOL_PROMPT)
        after = int(time.time())
        message = await s.webui.message(sent)
        page_text = await show_chat(tmp_path, openwebui, sent, "Tool results: ")
        chats = s.proxy.chats()
    context = describe(s.proxy.exchanges)
    # Two user-turn requests, no loop: the first is answered with the call ...
    assert len(chats) == 2, context
    first, second = chats
    assert TOOL in tool_names(first.json()), context
    called = answer_of(first)
    assert (called.text, called.finishes) == ("", ["tool_calls"]), context
    ((call_id, name, arguments),) = called.calls
    assert (name, orjson.loads(arguments)) == (TOOL, {})
    # ... the second carries what OpenWebUI's own tool returned, and gets the answer
    user, assistant, tool = second.json()["messages"]
    assert user == {"role": "user", "content": TOOL_PROMPT}
    assert [c["id"] for c in assistant["tool_calls"]] == [call_id], context
    assert (tool["role"], tool["tool_call_id"]) == ("tool", call_id)
    output = tool["content"]
    assert before <= orjson.loads(output)["current_timestamp"] <= after
    answered = answer_of(second)
    assert answered.calls == [], context
    assert (answered.text, answered.finishes) == (f"Tool results: {output}", ["stop"]), context
    # One codex turn: the model called the function once and read its output once.
    turn = turn_requests(scripted_model, TOOL_PROMPT)
    assert [(r.scenario, r.step) for r in turn] == [("client_tool", 0), ("client_tool", 1)]
    assert all(TOOL in model_tool_names(r.body) for r in turn)
    outputs = [i for i in turn[1].body["input"] if i.get("type") == "function_call_output"]
    assert [o["output"] for o in outputs] == [output]
    # What OpenWebUI stored and shows: the call, its output, the answer, once.
    assert message["done"] is True, message
    assert "error" not in message, message
    stored = message["output"]
    assert [item["type"] for item in stored] == ["function_call", "function_call_output", "message"]
    assert (stored[0]["name"], stored[0]["call_id"]) == (TOOL, call_id)
    assert [part["text"] for part in stored[1]["output"]] == [output]
    assert message["content"] == f"Tool results: {output}"
    assert page_text.count("Tool results: ") == 1, page_text
    if shot:
        shutil.copyfile(tmp_path / "openwebui-chat.png", shot)


async def test_with_client_tools_never_no_tool_is_called(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    openwebui: OpenWebUIServer,
) -> None:
    async with stack(tmp_path, codex_bin, scripted_model, openwebui, client_tools="never") as s:
        sent = await send(s, TOOL_PROMPT)
        message = await s.webui.message(sent)
        chats = s.proxy.chats()
    context = describe(s.proxy.exchanges)
    (chat,) = chats  # OpenWebUI sent its tools, once
    assert TOOL in tool_names(chat.json()), context
    answered = answer_of(chat)
    assert (answered.calls, answered.finishes) == ([], ["stop"]), context
    # codex was not offered the function; the scripted model calls it all the
    # same, and codex itself answers that call: it knows no such tool
    turn = turn_requests(scripted_model, TOOL_PROMPT)
    assert [(r.scenario, r.step) for r in turn] == [("client_tool", 0), ("client_tool", 1)]
    assert not any(TOOL in model_tool_names(r.body) for r in turn)
    assert answered.text == f"Tool results: unsupported call: {TOOL}", context
    assert message["content"] == answered.text
    assert [item["type"] for item in message["output"]] == ["message"]


async def test_the_chat_goes_on_after_a_tool_call(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    openwebui: OpenWebUIServer,
) -> None:
    async with stack(tmp_path, codex_bin, scripted_model, openwebui) as s:
        first = await send(s, TOOL_PROMPT)
        sent = await send(s, "[scenario:plain] thanks", after=first)
        message = await s.webui.message(sent)
        chats = s.proxy.chats()
    context = describe(s.proxy.exchanges)
    assert len(chats) == 3, context  # the call, its result, the next message
    # OpenWebUI replays the call and its result in the history
    roles = [m["role"] for m in chats[2].json()["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"], context
    answered = answer_of(chats[2])
    assert (answered.text, answered.calls, answered.finishes) == (PLAIN_TEXT, [], ["stop"])
    assert message["content"] == PLAIN_TEXT, context
    assert [item["type"] for item in message["output"]] == ["message"]


@attrs.frozen
class Answer:
    """A streamed chat completion, put together."""

    text: str
    calls: list[tuple[str, str, str]]  # (id, name, arguments)
    finishes: list[str]


def answer_of(exchange: Exchange) -> Answer:
    """The text, tool calls and finish reasons of a streamed answer that ended."""
    events = exchange.events()
    assert events[-1] == "[DONE]", events
    text, finishes = "", []
    calls: dict[int, list[str]] = {}
    for event in events[:-1]:
        for choice in event.get("choices", []):
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], ["", "", ""])
                slot[0] += call.get("id") or ""
                slot[1] += call.get("function", {}).get("name") or ""
                slot[2] += call.get("function", {}).get("arguments") or ""
            if choice.get("finish_reason"):
                finishes.append(choice["finish_reason"])
    return Answer(text, [(i, n, a) for i, n, a in calls.values()], finishes)


def turn_requests(model: ScriptedModelServer, prompt: str) -> list[RecordedRequest]:
    """The model requests of the turn whose user message is ``prompt`` (the
    background tasks quote it inside their own message)."""
    found = []
    for request in model.model.requests:
        typed = [t for _, t in user_messages(request.body) if not is_injected_user_text(t)]
        if typed and typed[-1].strip() == prompt:
            found.append(request)
    return found


async def show_chat(tmp_path: Path, openwebui: OpenWebUIServer, sent: Sent, answer: str) -> str:
    """Open the chat in OpenWebUI's web UI in headless Chromium, signed in as the
    admin, once ``answer`` shows: open its tool card with a click, screenshot
    it, return the page's text."""
    token = orjson.dumps(openwebui.token).decode()
    with trio.fail_after(60):
        async with open_chromium(tmp_path / "chromium") as browser:
            page = await browser.new_page(width=1280, height=800)
            await page.navigate(openwebui.url + "/auth")
            await page.wait_for("document.readyState === 'complete'")
            await page.evaluate(f"localStorage.setItem('token', {token})")
            await page.navigate(f"{openwebui.url}/c/{sent.chat_id}")
            await page.wait_for(
                f"document.body?.innerText.includes({orjson.dumps(answer).decode()})"
            )
            # the tool card OpenWebUI draws for the call; opened, it shows the result
            await page.wait_for(MARK_TOOL_CARD)
            await page.click("[data-tool-card]")
            await page.wait_for("document.body.innerText.includes('current_iso')")
            await page.evaluate(SETTLED)
            await page.screenshot(tmp_path / "openwebui-chat.png")
            text: str = await page.evaluate("document.body.innerText")
    return text
