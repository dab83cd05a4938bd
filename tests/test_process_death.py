"""Nothing a child started outlives the service, even a service killed with SIGKILL.

supervisor.process starts each program under a guardian (supervisor.guardian)
that holds a lifeline to the service; these tests kill the service's stand-in
(or the real ``codex-bridge serve``) with SIGKILL and watch every process that
was below it disappear.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from fixtures.codex_home import write_codex_home
from fixtures.scripted_model import ScriptedModelServer
from supervisor.process import start_supervised
from supervisor.reaper import MANAGED_PIDS, descendants
from tests.helpers import (
    REPO_ROOT,
    SESSION_PROCESSES,
    chat_body,
    describe_processes,
    leftover_processes,
)

#: Prints the pid of a grandchild it starts in a session of its own, then
#: waits for a line on stdin and ends as the line says ("exit N" or "kill SIG").
PROGRAM = """
import os, signal, subprocess, sys
grandchild = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
)
print(grandchild.pid, flush=True)
how, what = sys.stdin.readline().split()
if how == "kill":
    os.kill(os.getpid(), getattr(signal, what))
sys.exit(int(what))
"""

#: The service's stand-in: starts PROGRAM supervised, prints
#: "<guardian> <program> <grandchild>", then waits to be killed.
SERVICE = f"""
import os, sys, trio
sys.path.insert(0, {str(REPO_ROOT)!r})
from supervisor.process import start_supervised

async def main():
    process = await start_supervised([sys.executable, "-c", {PROGRAM!r}], env=os.environ)
    line = b""
    while not line.endswith(b"\\n"):
        chunk = await process.stdout.receive_some(1)
        assert chunk, "the program died"
        line += chunk
    grandchild = line.decode().strip()
    print(process.guardian_pid, process.pid, grandchild, flush=True)
    await trio.sleep(60)

trio.run(main)
"""


def _stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, pgid, sid, start time) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, f"EOF after {line!r}"
        line += chunk
    return line


async def _read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    return data


def _survivors(processes: dict[int, int]) -> list[int]:
    """Those of ``processes`` (pid → start time) still there; zombies
    re-parented to us (the test process is a subreaper) are reaped."""
    me = os.getpid()
    survivors = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is None or stat[4] != started:
            continue
        if stat[0] == "Z" and stat[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        survivors.append(pid)
    return survivors


async def _gone_within(processes: dict[int, int], timeout_s: float) -> None:
    """Wait until none of ``processes`` (pid → start time) exists any more;
    fail if some do after ``timeout_s``, once they are SIGKILLed and reaped."""
    with trio.move_on_after(timeout_s):
        while True:
            survivors = _survivors(processes)
            if not survivors:
                return
            await trio.sleep(0.02)
    described = describe_processes(survivors)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with trio.move_on_after(5):
        while True:
            if not _survivors({pid: processes[pid] for pid in survivors}):
                break
            await trio.sleep(0.02)
    pytest.fail(f"outlived the service: {described}", pytrace=False)


def _thread_exists(thread: threading.Thread) -> bool:
    return Path(f"/proc/self/task/{thread.native_id}").exists()


# -- the spawn module -----------------------------------------------------------------------


def _open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


async def test_a_supervised_program_talks_exits_and_is_reaped() -> None:
    fds = _open_fds()
    with trio.fail_after(20):
        process = await start_supervised([sys.executable, "-c", PROGRAM], env=os.environ)
        guardian = process.guardian_pid
        assert guardian in MANAGED_PIDS
        # the program: the guardian's child, in a session and group of its own
        program = _stat(process.pid)
        assert program is not None
        assert program[1:4] == (guardian, process.pid, process.pid)
        grandchild = int(await _read_line(process.stdout))
        assert _alive(grandchild)
        await process.stdin.send_all(b"exit 7\n")
        await process.stdin.aclose()
        assert await _read_to_eof(process.stdout) == b""
        assert await process.wait() == 7
        await process.stdout.aclose()
        await process.stderr.aclose()
    assert process.returncode == 7
    assert guardian not in MANAGED_PIDS
    assert _open_fds() == fds  # no pipe left open, the lifeline included
    # all reaped: the guardian by us, the program and its grandchild (which
    # left the program's session) by the guardian
    assert [_stat(pid) for pid in (guardian, process.pid, grandchild)] == [None] * 3


async def test_a_program_killed_by_a_signal_is_reported_so() -> None:
    with trio.fail_after(20):
        process = await start_supervised([sys.executable, "-c", PROGRAM], env=os.environ)
        grandchild = int(await _read_line(process.stdout))
        await process.stdin.send_all(b"kill SIGTERM\n")
        assert await _read_to_eof(process.stdout) == b""
        while True:  # seen through returncode alone, without wait()
            if process.returncode is not None:
                break
            await trio.sleep(0.01)
        for stream in (process.stdin, process.stdout, process.stderr):
            await stream.aclose()
    assert process.returncode == -signal.SIGTERM
    assert process.guardian_pid not in MANAGED_PIDS
    assert _stat(grandchild) is None


async def test_a_program_that_cannot_start_raises_oserror(tmp_path: Path) -> None:
    before = set(MANAGED_PIDS)
    with trio.fail_after(20), pytest.raises(FileNotFoundError) as missing:
        await start_supervised(["/nonexistent/codex", "app-server"], env=os.environ)
    assert missing.value.filename == "/nonexistent/codex"
    # found, but exec fails: the guardian reports it
    not_executable = tmp_path / "codex"
    not_executable.write_text("#!/bin/sh\n")
    with trio.fail_after(20), pytest.raises(PermissionError) as refused:
        await start_supervised([str(not_executable), "app-server"], env=os.environ)
    assert refused.value.filename == str(not_executable)
    assert before == MANAGED_PIDS


async def test_a_start_cancelled_midway_leaves_nothing() -> None:
    before = set(MANAGED_PIDS)
    with trio.fail_after(20):
        with trio.move_on_after(0.001) as scope:
            await start_supervised([sys.executable, "-c", PROGRAM], env=os.environ)
    assert scope.cancelled_caught
    assert before == MANAGED_PIDS
    ours = MANAGED_PIDS | SESSION_PROCESSES
    assert [pid for pid in leftover_processes(set()) if pid not in ours] == []


# -- the lifeline -------------------------------------------------------------------------------


async def test_the_program_dies_with_a_service_killed_by_sigkill() -> None:
    """The service's stand-in is SIGKILLed while its program is stopped
    (SIGSTOP: it would never see EOF on stdin) and has a grandchild in a
    session of its own: all of them, and the guardian, are gone at once."""
    with trio.fail_after(30):
        service = await trio.lowlevel.open_process(
            [sys.executable, "-c", SERVICE], stdout=subprocess.PIPE
        )
        try:
            assert service.stdout is not None
            line = await _read_line(service.stdout)
            guardian, program, grandchild = map(int, line.split())
            below = {pid: _stat(pid) for pid in (guardian, program, grandchild)}
            os.kill(program, signal.SIGSTOP)
        finally:
            service.kill()
            await service.wait()
            if service.stdout is not None:
                await service.stdout.aclose()
        assert all(stat is not None for stat in below.values())
        await _gone_within({pid: stat[4] for pid, stat in below.items() if stat}, timeout_s=5)


async def test_a_healthy_program_outlives_the_thread_that_spawned_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trio forks in a worker thread that exits after IDLE_TIMEOUT (10 s) of
    idleness; a parent-death signal is sent when the *thread* that forked
    exits, so one set on the guardian would kill healthy children 10 s after
    they start. Here idle worker threads exit at once, and the program still
    answers after the thread that forked its guardian is gone."""
    monkeypatch.setattr("trio._core._thread_cache.IDLE_TIMEOUT", 0.01)
    spawners: list[threading.Thread] = []
    popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        spawners.append(threading.current_thread())
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    with trio.fail_after(20):
        process = await start_supervised([sys.executable, "-c", PROGRAM], env=os.environ)
        monkeypatch.setattr(subprocess, "Popen", popen)
        (spawner,) = spawners
        assert spawner is not threading.current_thread()
        # a parent-death signal goes out as the thread exits, before its
        # /proc entry goes
        while True:
            if not _thread_exists(spawner):
                break
            await trio.sleep(0.01)
        assert _alive(process.guardian_pid)
        assert _alive(process.pid)
        grandchild = int(await _read_line(process.stdout))
        await process.stdin.send_all(b"exit 0\n")
        assert await process.wait() == 0
        for stream in (process.stdin, process.stdout, process.stderr):
            await stream.aclose()
    assert _stat(grandchild) is None


# -- the real service, real codex -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _commands(root: int, argv: bytes) -> list[int]:
    found = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == argv:
                found.append(pid)
    return found


@pytest.mark.real_codex
async def test_nothing_outlives_a_real_service_killed_by_sigkill(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """``codex-bridge serve`` with two real codex children: one runs
    ``sleep 300`` for a turn (sandbox, bubblewrap, login shell), the other is
    stopped with SIGSTOP; the login profile leaves a daemon behind, as
    ssh-agent would. SIGKILL the service: every process that was below it is
    gone within seconds."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bash_profile").write_text("sleep 301 </dev/null >/dev/null 2>&1 &\n")
    codex_home = tmp_path / "codex-home"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CODEX_API_KEY")}
    env.update(write_codex_home(codex_home, scripted_model.base_url))
    env.update(
        HOME=str(home),
        CODEX_BRIDGE_PORT=str(port),
        CODEX_BRIDGE_POOL_SIZE="2",
        CODEX_BRIDGE_CODEX_BIN=str(codex_bin),
        CODEX_BRIDGE_CODEX_HOME=str(codex_home),
        CODEX_BRIDGE_WORKSPACE_DIR=str(tmp_path / "workspace"),
        CODEX_BRIDGE_STATE_URL=f"sqlite:///{tmp_path / 'state.sqlite3'}",
        CODEX_BRIDGE_LOG_LEVEL="warning",
    )
    serve = [str(Path(sys.executable).parent / "codex-bridge"), "serve"]
    marker = '[scenario:exec cmd="sleep 300"] go'
    with trio.fail_after(90):
        service = await trio.lowlevel.open_process(serve, env=env)
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
                trio.open_nursery() as nursery,
            ):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        status = (await client.get("/admin/pool")).json()
                        if status["ready"] == 2:
                            break
                    await trio.sleep(0.1)
                codex = [child["pid"] for child in status["children"]]

                async def turn() -> None:
                    with contextlib.suppress(httpx.HTTPError):
                        await client.post("/v1/chat/completions", json=chat_body(marker))

                nursery.start_soon(turn)
                while True:
                    if command := _commands(service.pid, b"sleep\x00300\x00"):
                        break
                    await trio.sleep(0.05)
                (busy,) = [pid for pid in codex if command[0] in descendants(pid)]
                (idle,) = [pid for pid in codex if pid != busy]
                os.kill(idle, signal.SIGSTOP)
                below = {pid: stat[4] for pid in descendants(service.pid) if (stat := _stat(pid))}
                service.kill()
                await service.wait()
                nursery.cancel_scope.cancel()
        finally:
            if service.returncode is None:
                service.kill()
                await service.wait()
        assert idle in below
        assert command[0] in below
        await _gone_within(below, timeout_s=10)
