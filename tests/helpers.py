"""Shared test machinery: running the service, reading SSE, process checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import orjson
import pytest
import trio

from bridge.protocol import TurnEvent
from codex_bridge.config import Settings
from codex_bridge.service import ServiceHandle, child_launch, run_service
from fixtures.codex_home import write_codex_home
from fixtures.scripted_model import ScriptedModelServer
from fixtures.transcript import load, transcript_path
from supervisor import Turn, TurnEnded
from supervisor.child import Child, ChildLaunch, ChildState
from supervisor.reaper import MANAGED_PIDS

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Servers that session fixtures keep for the whole run (e.g. redis-server).
SESSION_PROCESSES: set[int] = set()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "pool_size": 1,
        "codex_home": str(tmp_path / "codex-home"),
        "workspace_dir": str(tmp_path / "workspace"),
        "state_url": f"sqlite:///{tmp_path / 'state' / 'conversations.sqlite3'}",
        "keepalive_interval_s": 5.0,
        "restart_backoff_initial_s": 0.05,
        "stop_grace_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


class LineLog:
    """A peer tap keeping every line both ways, for assertions."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, direction: str, line: bytes) -> None:
        self.lines.append((direction, orjson.loads(line)))

    def sent(self, method: str) -> list[dict[str, Any]]:
        return [m for d, m in self.lines if d == "out" and m.get("method") == method]


def replay_launch(name: str, *, tap: LineLog | None = None, **kwargs: Any) -> ChildLaunch:
    return ChildLaunch(
        argv=(sys.executable, "-m", "fixtures.replay_child", str(transcript_path(name))),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=str(REPO_ROOT),
        stop_grace_s=2.0,
        tap=tap,
        **kwargs,
    )


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(ppid, pgid) of a process, or None if it vanished."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2])


def leftover_processes(pgids: set[int]) -> list[int]:
    """Children of this test process (zombies included) and members of ``pgids``."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        stat = _proc_stat(entry)
        if stat is not None and (stat[0] == me or stat[1] in pgids):
            found.append(int(entry))
    return found


def describe_processes(pids: list[int]) -> list[str]:
    described = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            state = " ".join(Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[:4])
        except OSError:
            continue
        described.append(f"{pid} [{state}] {cmdline.decode(errors='replace')[:120]}")
    return described


@attrs.define
class RunningService:
    handle: ServiceHandle
    client: httpx.AsyncClient
    pgids: set[int]

    @property
    def url(self) -> str:
        return self.handle.url


@asynccontextmanager
async def running_service(
    settings: Settings, launch: ChildLaunch | None = None
) -> AsyncIterator[RunningService]:
    """Run the whole service; on exit stop it and prove no process is left."""
    pgids: set[int] = set()
    async with trio.open_nursery() as nursery:
        handle: ServiceHandle = await nursery.start(
            lambda task_status: run_service(settings, launch=launch, task_status=task_status)
        )
        async with httpx.AsyncClient(base_url=handle.url, timeout=30) as client:
            service = RunningService(handle, client, pgids)
            try:
                yield service
            finally:
                pgids.update(c.pid for c in handle.pool.children if c.pid is not None)
                handle.shutdown()
    # children of another service still running in this test are not ours
    left = [pid for pid in leftover_processes(pgids) if pid not in MANAGED_PIDS]
    assert not left, f"processes outlived the service: {describe_processes(left)}"


def sse_events(raw: bytes) -> list[Any]:
    """Parse an SSE body into its data payloads ([DONE] kept as the string)."""
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def content_of(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


def chat_body(text: str, *, stream: bool = True, **extra: Any) -> Mapping[str, Any]:
    return {
        "model": extra.pop("model", "scripted-model"),
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


FAKE = str(Path(__file__).with_name("fake_app_server.py"))


def fake(
    mode: str,
    deltas: int = 3,
    *,
    delay_s: float | None = None,
    state: str | None = None,
    **kwargs: Any,
) -> ChildLaunch:
    """A launch of tests/fake_app_server.py; ``delay_s`` spaces its deltas out,
    ``state`` is the marker file of its "-once" modes."""
    env = dict(os.environ)
    if delay_s is not None:
        env["FAKE_DELAY_S"] = str(delay_s)
    if state is not None:
        env["FAKE_STATE"] = state
    values: dict[str, Any] = {"startup_timeout_s": 10.0, "stop_grace_s": 1.0}
    values.update(kwargs)
    return ChildLaunch(argv=(sys.executable, "-u", FAKE, mode, str(deltas)), env=env, **values)


def state_of(child: Child) -> ChildState:
    return child.state


async def collect(turn: Turn) -> list[TurnEvent | TurnEnded]:
    return [event async for event in turn]


def fake_serve_env(tmp_path: Path, mode: str = "ok", deltas: int = 40) -> dict[str, str]:
    """Settings for ``codex-bridge serve`` on fake children
    (tests/fake_app_server.py ``mode``), all its state under ``tmp_path``."""
    script = tmp_path / "fake-codex"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -u {FAKE} {mode} {deltas}\n")
    script.chmod(0o755)
    return {
        "CODEX_BRIDGE_POOL_SIZE": "2",
        "CODEX_BRIDGE_CODEX_BIN": str(script),
        "CODEX_BRIDGE_CODEX_HOME": str(tmp_path / "home"),
        "CODEX_BRIDGE_WORKSPACE_DIR": str(tmp_path / "ws"),
        "CODEX_BRIDGE_STATE_URL": f"sqlite:///{tmp_path / 'state.sqlite3'}",
        "CODEX_BRIDGE_LOG_LEVEL": "warning",
        # a fake child runs no command: there is no sandbox to prove
        "CODEX_BRIDGE_SANDBOX_MODE": "danger-full-access",
        "CODEX_BRIDGE_CHILD_ENV": "FAKE_*",  # the fake's settings, through the allowlist
    }


async def start_serve(
    tmp_path: Path,
    mode: str = "ok",
    deltas: int = 40,
    *,
    stderr: IO[bytes] | None = None,
    **env: str,
) -> tuple[trio.Process, str]:
    """The real ``codex-bridge serve`` process on fake children (tests/fake_app_server.py
    ``mode``), settings from ``env``, its log to ``stderr``; returns once it is ready."""
    port = free_port()
    full_env = {
        **os.environ,
        **fake_serve_env(tmp_path, mode, deltas),
        "CODEX_BRIDGE_PORT": str(port),
        "FAKE_DELAY_S": "0.1",
        **env,
    }
    serve = [str(Path(sys.executable).parent / "codex-bridge"), "serve"]
    process = await trio.lowlevel.open_process(serve, env=full_env, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return process, url
            except httpx.TransportError:
                pass
            if process.returncode is not None:
                raise RuntimeError(f"codex-bridge serve exited with {process.returncode}")
            await trio.sleep(0.05)


async def stop_serve(process: trio.Process) -> None:
    """SIGTERM a ``codex-bridge serve`` (killed after 15 s) and wait for it."""
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(15):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def eventually(predicate: Callable[[], bool], *, interval_s: float = 0.01) -> None:
    """Wait until ``predicate()`` holds, for states no event announces (what a
    child process did); bound it with the caller's ``fail_after``."""
    while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await trio.sleep(interval_s)


def recorded(name: str, method: str) -> list[dict[str, Any]]:
    """Params of the notifications ``method`` in a transcript."""
    return [
        e.msg["params"]
        for e in load(transcript_path(name)).entries
        if e.dir == "in" and e.msg.get("method") == method
    ]


@asynccontextmanager
async def real_service(
    tmp_path: Path, codex_bin: Path, model: ScriptedModelServer | None, **settings: Any
) -> AsyncIterator[RunningService]:
    """The service with real children; pointed at ``model`` when given,
    else with a bare CODEX_HOME and no credentials at all."""
    config = make_settings(tmp_path, codex_bin=str(codex_bin), **settings)
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CODEX_API_KEY")}
    if model is not None:
        environ.update(write_codex_home(config.codex_home_path, model.base_url))
    async with running_service(config, child_launch(config, environ=environ)) as service:
        yield service


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free loopback port (.ci/run installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: install Debian's redis-server (.ci/run does)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    SESSION_PROCESSES.add(server.pid)
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
        SESSION_PROCESSES.discard(server.pid)
