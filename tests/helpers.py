"""Shared test machinery: running the service, reading SSE, process checks."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio

from codex_bridge.config import Settings
from codex_bridge.service import ServiceHandle, run_service
from fixtures.transcript import transcript_path
from supervisor.child import ChildLaunch
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
    tmp_path: Path, mode: str = "ok", deltas: int = 40, **env: str
) -> tuple[trio.Process, str]:
    """The real ``codex-bridge serve`` process on fake children (tests/fake_app_server.py
    ``mode``), settings from ``env``; returns once it is ready."""
    port = free_port()
    full_env = {
        **os.environ,
        **fake_serve_env(tmp_path, mode, deltas),
        "CODEX_BRIDGE_PORT": str(port),
        "FAKE_DELAY_S": "0.1",
        **env,
    }
    serve = [str(Path(sys.executable).parent / "codex-bridge"), "serve"]
    process = await trio.lowlevel.open_process(serve, env=full_env)
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


async def eventually(predicate: Callable[[], bool], *, interval_s: float = 0.01) -> None:
    """Wait until ``predicate()`` holds, for states no event announces (what a
    child process did); bound it with the caller's ``fail_after``."""
    while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await trio.sleep(interval_s)
