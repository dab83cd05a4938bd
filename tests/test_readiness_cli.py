"""Readiness follows codex's login; ``codex-bridge login``, ``--version`` and
the CLI's failures; ``make demo`` keeps its state to itself.

The authentication tests run the real binary: what codex reports, and when it
notices a login, is the question.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypercorn.config import Sockets

from codex_bridge import service
from codex_bridge.admin_cli import _render
from codex_bridge.cli import project_version
from codex_bridge.login import not_authenticated_message
from codex_bridge.service import ListenError, bound_sockets, child_launch
from fixtures.codex_home import API_KEY, API_KEY_ENV, write_codex_home
from fixtures.demo import demo_settings
from fixtures.scripted_model import ScriptedModelServer
from tests.helpers import (
    FAKE,
    RunningService,
    chat_body,
    content_of,
    fake_serve_env,
    free_port,
    leftover_processes,
    make_settings,
    running_service,
    sse_events,
)

CLI = str(Path(sys.executable).parent / "codex-bridge")
TIMEOUT_S = 60


def _without_credentials() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CODEX_API_KEY")}


@asynccontextmanager
async def unauthenticated_service(
    tmp_path: Path, codex_bin: Path, **extra_env: str
) -> AsyncIterator[RunningService]:
    """Real children, two of them, a bare CODEX_HOME and no login."""
    settings = make_settings(
        tmp_path, codex_bin=str(codex_bin), pool_size=2, auth_recheck_interval_s=0.2
    )
    environ = {**_without_credentials(), "RUST_LOG": "warn", **extra_env}
    async with running_service(settings, child_launch(settings, environ=environ)) as service:
        yield service


async def wait_ready(service: RunningService) -> dict[str, Any]:
    while True:
        ready = await service.client.get("/readyz")
        if ready.status_code == 200:
            body: dict[str, Any] = ready.json()
            return body
        await trio.sleep(0.05)


async def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The console script, as a user runs it (no API key in the environment)."""
    return await trio.run_process(
        [CLI, *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**_without_credentials(), **(env or {})},
    )


# -- readiness and authentication (real binary) ---------------------------------------


@pytest.mark.real_codex
async def test_not_logged_in_live_but_not_ready_until_a_login_is_stored(
    tmp_path: Path, codex_bin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No login: /healthz 200 (alive), /readyz 503 naming a command that works,
    /admin/pool says so, the log says so once. `codex-bridge login
    --with-api-key` into the same CODEX_HOME while the service runs: ready,
    without a restart of the service."""
    caplog.set_level(logging.INFO)
    home = tmp_path / "codex-home"
    with trio.fail_after(TIMEOUT_S):
        async with unauthenticated_service(tmp_path, codex_bin) as svc:
            health = await svc.client.get("/healthz")
            ready = await svc.client.get("/readyz")
            pool = (await svc.client.get("/admin/pool")).json()
            chat = await svc.client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            )
            await trio.sleep(1.0)  # several re-checks: still one log line
            before = [c["pid"] for c in pool["children"]]

            login = await run_cli(
                "login", "--codex-home", str(home), "--with-api-key", stdin=b"sk-dummy\n"
            )
            assert login.returncode == 0, login.stderr
            now_ready = await wait_ready(svc)
            after = (await svc.client.get("/admin/pool")).json()

    assert health.status_code == 200
    assert ready.status_code == 503
    body = ready.json()
    assert body["code"] == "codex_not_authenticated"
    command = f"{CLI} login --codex-home {home}"
    assert f"`{command} --device-auth`" in body["reason"]
    assert f"`printenv OPENAI_API_KEY | {command} --with-api-key`" in body["reason"]
    assert "`codex login" not in body["reason"]
    assert pool["auth_problem"] == body["reason"]
    assert [c["auth_problem"] for c in pool["children"]] == [body["reason"]] * 2
    assert chat.status_code == 503
    assert chat.json()["error"]["message"] == body["reason"]

    assert now_ready["ready"] is True
    assert after["auth_problem"] is None
    assert all(c["auth_problem"] is None for c in after["children"])
    # codex reads auth.json at start only: the children were replaced to see it
    assert not {c["pid"] for c in after["children"]} & set(before)
    errors = [  # the bridge's own (codex's stderr lines at ERROR are codex's)
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and " stderr: " not in r.getMessage()
    ]
    assert [r.getMessage() for r in errors] == [body["reason"]]
    recovered = [r for r in caplog.records if "can reach its model now" in r.getMessage()]
    assert len(recovered) == 1


@pytest.mark.real_codex
async def test_a_provider_configured_while_running_makes_the_service_ready(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """config.toml pointing at a provider with its own key: account/read sees
    it (requiresOpenaiAuth: false) in the running children, which are then
    replaced (codex keeps the model catalog it loaded at start), and a turn
    on the new provider's model works, all without restarting the service."""
    with trio.fail_after(TIMEOUT_S):
        async with unauthenticated_service(tmp_path, codex_bin, **{API_KEY_ENV: API_KEY}) as svc:
            assert (await svc.client.get("/readyz")).status_code == 503
            write_codex_home(tmp_path / "codex-home", scripted_model.base_url)
            await wait_ready(svc)
            models = (await svc.client.get("/v1/models")).json()
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("[scenario:words n=3] go")
            )
    assert [m["id"] for m in models["data"]] == ["scripted-model"]
    assert response.status_code == 200, response.text
    assert content_of(sse_events(response.content)).split() == ["w1", "w2", "w3"]


@pytest.mark.real_codex
async def test_an_api_key_in_the_environment_is_not_a_login(
    tmp_path: Path, codex_bin: Path
) -> None:
    """codex app-server sends no key from OPENAI_API_KEY/CODEX_API_KEY: with
    only those, the service is not ready, and says why."""
    with trio.fail_after(TIMEOUT_S):
        async with unauthenticated_service(
            tmp_path, codex_bin, OPENAI_API_KEY="sk-from-env", CODEX_API_KEY="sk-from-env"
        ) as svc:
            ready = await svc.client.get("/readyz")
    assert ready.status_code == 503
    assert "not enough" in ready.json()["reason"]


def test_pool_status_shows_the_missing_login(tmp_path: Path) -> None:
    problem = not_authenticated_message(str(tmp_path / "home"))
    child = {
        "slot": 0,
        "name": "codex-0.0",
        "state": "idle",
        "pid": 12,
        "restarts": 0,
        "auth_problem": problem,
    }
    status = {"size": 1, "ready": 1, "active_turns": 0, "queued": 0, "auth_problem": problem}
    text = _render({**status, "children": [child]})
    assert "NOT READY: codex is not logged in" in text.splitlines()[0]
    assert "no login" in text.splitlines()[3]
    assert text.splitlines()[-1] == f"not ready: {problem}"


# -- codex-bridge login ------------------------------------------------------------------


@pytest.mark.real_codex
async def test_login_with_api_key_stores_it_in_the_configured_home(tmp_path: Path) -> None:
    """The home comes from the same settings as `serve` (here the environment);
    codex creates auth.json there, and `login --status` reads it back."""
    home = tmp_path / "from-env" / "home"  # does not exist yet
    env = {"CODEX_BRIDGE_CODEX_HOME": str(home)}
    with trio.fail_after(TIMEOUT_S):
        stored = await run_cli("login", "--with-api-key", stdin=b"sk-dummy\n", env=env)
        status = await run_cli("login", "--status", env=env)
    assert stored.returncode == 0, stored.stderr
    assert (home / "auth.json").is_file()
    assert f"CODEX_HOME={home}" in stored.stderr.decode()
    assert status.returncode == 0, status.stderr
    assert "API key configured" in status.stderr.decode()  # codex writes it there


async def test_login_runs_codex_login_in_the_home_and_exits_with_its_status(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    fake = tmp_path / "codex"
    fake.write_text(f'#!/bin/sh\necho "$CODEX_HOME $*" > {seen}\nexit 7\n')
    fake.chmod(0o755)
    config = tmp_path / "bridge.toml"
    config.write_text(f'codex_home = "{tmp_path / "configured"}"\ncodex_bin = "{fake}"\n')
    with trio.fail_after(TIMEOUT_S):
        device = await run_cli("login", "--config", str(config), "--device-auth")
    assert device.returncode == 7
    assert seen.read_text() == f"{tmp_path / 'configured'} login --device-auth\n"


async def test_login_help_and_bad_settings() -> None:
    with trio.fail_after(TIMEOUT_S):
        shown = await run_cli("login", "--help")
        bad = await run_cli("login", env={"CODEX_BRIDGE_CODEX_BIN": "/nonexistent/codex"})
        usage = await run_cli("login", "--device-auth", "--with-api-key")
    assert shown.returncode == 0
    assert b"--with-api-key" in shown.stdout
    assert b"--device-auth" in shown.stdout
    assert bad.returncode == 1
    assert bad.stderr.decode().splitlines() == [
        "codex-bridge: error: invalid setting 'codex_bin': "
        "/nonexistent/codex is not an executable file"
    ]
    assert usage.returncode == 2  # argparse's usage error


# -- --version ------------------------------------------------------------------------------


@pytest.mark.real_codex
async def test_version_names_the_project_and_the_pinned_codex(codex_bin: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        binary = await trio.run_process([str(codex_bin), "--version"], capture_stdout=True)
        shown = await run_cli("--version")
    codex = binary.stdout.decode().strip()
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode() == f"codex-bridge {project_version()} ({codex})\n"
    assert project_version() != "unknown"  # from the installed package metadata
    assert codex.startswith("codex-cli ")


# -- serve: cannot listen ----------------------------------------------------------------


@contextmanager
def holding_port(*, listening: bool) -> Iterator[int]:
    """A loopback port taken by another socket: listening (a bind fails), or
    only bound with SO_REUSEADDR (the bind succeeds, listening fails)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        if listening:
            sock.listen()
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _ours(tmp_path: Path) -> list[str]:
    """Processes still running that were started for this test (by path)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp_path) in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


async def serve_on(tmp_path: Path, port: int) -> subprocess.CompletedProcess[bytes]:
    env = fake_serve_env(tmp_path, "ok", 5)
    return await run_cli("serve", "--port", str(port), env=env)


async def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S), holding_port(listening=True) as port:
        served = await serve_on(tmp_path, port)
    assert served.returncode == 1
    assert served.stderr.decode().splitlines() == [
        f"codex-bridge: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
    assert _ours(tmp_path) == []


async def test_failing_to_listen_after_the_pool_is_up_leaves_no_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listening can still fail once the pool is up (another socket with
    SO_REUSEADDR listened there first): the children are stopped and reaped
    before the error reaches the caller."""
    running: list[int] = []

    def refuse(sockets: Sockets, backlog: int, stall_timeout_s: float) -> None:
        running.extend(leftover_processes(set()))
        raise ListenError("cannot listen on 127.0.0.1:1: address already in use")

    monkeypatch.setattr(service, "listen", refuse)
    settings = make_settings(tmp_path, pool_size=2)
    launch = attrs.evolve(
        child_launch(settings, environ=dict(os.environ)),
        argv=(sys.executable, "-u", FAKE, "ok", "5"),
        command_policy=None,  # a fake child runs no command
    )
    with trio.fail_after(TIMEOUT_S), pytest.raises(ExceptionGroup) as raised:
        await service.run_service(settings, launch=launch)
    assert raised.group_contains(ListenError)
    assert len(running) >= 2  # the children (under their guardians) were up
    assert leftover_processes(set()) == []


def test_bind_failures_say_where_and_why() -> None:
    with pytest.raises(ListenError) as unresolvable:
        bound_sockets("no-such-host.invalid", free_port())
    assert str(unresolvable.value).startswith("cannot listen on no-such-host.invalid:")
    assert "Errno" not in str(unresolvable.value)
    with holding_port(listening=True) as port, pytest.raises(ListenError) as in_use:
        bound_sockets("127.0.0.1", port)
    assert str(in_use.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"


# -- make demo -------------------------------------------------------------------------------


def test_demo_keeps_all_its_state_under_its_directory(tmp_path: Path) -> None:
    demo = tmp_path / ".demo"
    settings = demo_settings({}, demo)
    assert settings.codex_home == str(demo / "codex-home")
    assert settings.workspace_dir == str(demo / "workspace")
    assert settings.state_url == f"sqlite:///{demo / 'state' / 'conversations.sqlite3'}"
    chosen = demo_settings({"CODEX_BRIDGE_STATE_URL": "redis://localhost:6379/0"}, demo)
    assert chosen.state_url == "redis://localhost:6379/0"
