"""The real ``codex app-server`` binary against the scripted model.

These tests prove that the scripted model speaks the Responses API well enough
for codex: each one starts the native binary with a ``CODEX_HOME`` written by
:func:`fixtures.codex_home.write_codex_home` and runs turns over stdio
JSON-RPC with a deliberately small client of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import orjson
import pytest
import trio

from fixtures.codex_home import MODEL_SLUG, write_codex_home
from fixtures.scenarios import DROP_TEXT, PLAIN_TEXT, REASONING_PARTS, words
from fixtures.scripted_model import ScriptedModelServer, run_scripted_model
from supervisor.reaper import descendants, kill_descendants

TURN_TIMEOUT_S = 60
EXIT_GRACE_S = 5


pytestmark = pytest.mark.real_codex

Message = dict[str, Any]


@attrs.frozen
class Turn:
    status: str
    error: Any
    notifications: list[Message]  # everything for the thread between turn/start and turn/completed

    def of(self, method: str) -> list[dict[str, Any]]:
        return [n["params"] for n in self.notifications if n["method"] == method]

    def agent_text(self) -> str:
        return "".join(p["delta"] for p in self.of("item/agentMessage/delta"))

    def completed_items(self, item_type: str) -> list[dict[str, Any]]:
        return [p["item"] for p in self.of("item/completed") if p["item"]["type"] == item_type]


class AppServerClient:
    """Newline-delimited JSON-RPC (no ``"jsonrpc"`` field) over the child's stdio."""

    def __init__(self, process: trio.Process, stderr_path: Path) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = b""
        self._next_id = 1
        self.stderr_path = stderr_path

    def stderr_tail(self, limit: int = 4000) -> str:
        return self.stderr_path.read_text(errors="replace")[-limit:]

    async def send(self, message: Message) -> None:
        await self._stdin.send_all(orjson.dumps(message) + b"\n")

    async def receive(self) -> Message:
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some()
            if not chunk:
                raise EOFError(f"codex app-server closed stdout; stderr:\n{self.stderr_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: Message = orjson.loads(line)
        return message

    async def request(self, method: str, params: Message) -> Any:
        """Send a request and return its result; notifications before it are dropped."""
        request_id = self._next_id
        self._next_id += 1
        await self.send({"id": request_id, "method": method, "params": params})
        while True:
            message = await self.receive()
            if message.get("id") == request_id and "method" not in message:
                assert "error" not in message, message
                return message["result"]

    async def initialize(self) -> None:
        await self.request(
            "initialize", {"clientInfo": {"name": "scripted-model-test", "version": "0"}}
        )
        await self.send({"method": "initialized"})

    async def start_thread(self, cwd: Path) -> str:
        result = await self.request("thread/start", {"cwd": str(cwd)})
        thread_id: str = result["thread"]["id"]
        return thread_id

    async def run_turn(self, thread_id: str, text: str) -> Turn:
        """Start a turn and collect its notifications until ``turn/completed``.

        Approval requests are accepted.
        """
        request_id = self._next_id
        self._next_id += 1
        params = {"threadId": thread_id, "input": [{"type": "text", "text": text}]}
        await self.send({"id": request_id, "method": "turn/start", "params": params})
        notifications: list[Message] = []
        while True:
            message = await self.receive()
            if "method" not in message:
                assert "error" not in message, message
                continue
            if "id" in message:  # a server-to-client request: an approval
                await self.send({"id": message["id"], "result": {"decision": "accept"}})
                continue
            if message["params"].get("threadId") != thread_id:
                continue
            notifications.append(message)
            if message["method"] == "turn/completed":
                turn = message["params"]["turn"]
                return Turn(turn["status"], turn["error"], notifications)


@attrs.frozen
class CodexRig:
    model_server: ScriptedModelServer
    app: AppServerClient
    workdir: Path


async def stop_process(process: trio.Process) -> None:
    """Close stdin (codex exits on EOF), then SIGKILL the process group if needed,
    and whatever codex started outside it."""
    family = descendants(process.pid)
    with trio.move_on_after(EXIT_GRACE_S, shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        await process.wait()
    # Also kills anything codex started in its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with trio.CancelScope(shield=True):
        await process.wait()
        await kill_descendants(family, groups={process.pid})
        if process.stdout is not None:
            await process.stdout.aclose()


def open_log(path: Path) -> BinaryIO:
    return path.open("wb")


@asynccontextmanager
async def codex_app_server(
    tmp_path: Path, codex_bin: Path, **home_options: Any
) -> AsyncIterator[CodexRig]:
    home, workdir = tmp_path / "codex-home", tmp_path / "work"
    workdir.mkdir()
    async with run_scripted_model() as model_server:
        extra_env = write_codex_home(home, model_server.base_url, **home_options)
        env = {**os.environ, "CODEX_HOME": str(home), **extra_env}
        stderr_path = tmp_path / "codex.stderr"
        with open_log(stderr_path) as stderr:
            process = await trio.lowlevel.open_process(
                [str(codex_bin), "app-server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        try:
            app = AppServerClient(process, stderr_path)
            with trio.fail_after(TURN_TIMEOUT_S):
                await app.initialize()
            yield CodexRig(model_server, app, workdir)
        finally:
            await stop_process(process)


@pytest.fixture
async def rig(tmp_path: Path, codex_bin: Path) -> AsyncIterator[CodexRig]:
    async with codex_app_server(tmp_path, codex_bin) as running:
        yield running


async def run_one_turn(rig: CodexRig, text: str) -> Turn:
    thread_id = await rig.app.start_thread(rig.workdir)
    return await rig.app.run_turn(thread_id, text)


async def test_model_list_has_only_the_scripted_model(rig: CodexRig) -> None:
    with trio.fail_after(TURN_TIMEOUT_S):
        result = await rig.app.request("model/list", {})
        assert [(m["id"], m["isDefault"]) for m in result["data"]] == [(MODEL_SLUG, True)]


async def test_plain_turn(rig: CodexRig) -> None:
    with trio.fail_after(TURN_TIMEOUT_S):
        turn = await run_one_turn(rig, "[scenario:plain]")
        assert turn.status == "completed", turn.error
        assert turn.agent_text() == PLAIN_TEXT
        [usage] = turn.of("thread/tokenUsage/updated")
        assert usage["tokenUsage"]["last"]["outputTokens"] == len(words(PLAIN_TEXT))
        [request] = rig.model_server.model.requests
        assert (request.scenario, request.attempt, request.step) == ("plain", 1, 0)
        assert request.headers["authorization"] == "Bearer scripted"
        assert request.body["model"] == MODEL_SLUG
        assert rig.model_server.model.user_texts(request) == ["[scenario:plain]"]


async def test_reasoning_turn(rig: CodexRig) -> None:
    with trio.fail_after(TURN_TIMEOUT_S):
        turn = await run_one_turn(rig, "[scenario:reasoning]")
        assert turn.status == "completed", turn.error
        deltas = turn.of("item/reasoning/summaryTextDelta")
        by_part = ["", ""]
        for delta in deltas:
            by_part[delta["summaryIndex"]] += delta["delta"]
        assert by_part == list(REASONING_PARTS)
        [reasoning] = turn.completed_items("reasoning")
        assert reasoning["summary"] == list(REASONING_PARTS)
        assert turn.agent_text().startswith("Done thinking")


async def test_exec_turn_runs_the_command(rig: CodexRig) -> None:
    with trio.fail_after(TURN_TIMEOUT_S):
        turn = await run_one_turn(rig, '[scenario:exec cmd="echo done-42"]')
        assert turn.status == "completed", turn.error
        [command] = turn.completed_items("commandExecution")
        assert command["status"] == "completed"
        assert command["exitCode"] == 0
        assert "done-42" in command["aggregatedOutput"]
        assert "done-42" in turn.agent_text()
        requests = rig.model_server.model.requests
        assert [(r.scenario, r.step) for r in requests] == [("exec", 0), ("exec", 1)]
        output_items = [
            i for i in requests[1].body["input"] if i.get("type") == "function_call_output"
        ]
        assert "done-42" in output_items[-1]["output"]


async def test_stream_drop_is_retried_by_codex(rig: CodexRig) -> None:
    with trio.fail_after(TURN_TIMEOUT_S):
        turn = await run_one_turn(rig, "[scenario:stream_drop]")
        assert turn.status == "completed", turn.error
        assert [r.attempt for r in rig.model_server.model.requests] == [1, 2]
        assert any(error["willRetry"] for error in turn.of("error"))
        [message] = turn.completed_items("agentMessage")
        assert message["text"] == DROP_TEXT
        # The first, dropped stream's deltas were already sent before the retry.
        assert turn.agent_text() == "".join(words(DROP_TEXT)[:2]) + DROP_TEXT


async def test_http500_fails_the_turn(rig: CodexRig) -> None:
    with trio.fail_after(TURN_TIMEOUT_S):
        turn = await run_one_turn(rig, "[scenario:http500]")
        assert turn.status == "failed"
        assert turn.error is not None
        assert turn.of("error")[-1]["willRetry"] is False
        requests = rig.model_server.model.requests
        assert {r.scenario for r in requests} == {"http500"}
        # request_max_retries=1 and stream_max_retries=1: 2 HTTP tries x 2 streams.
        assert [r.attempt for r in requests] == [1, 2, 3, 4]
