"""What a command the model runs can see and reach, proved on the real binary.

The scripted model makes codex run a command; what the command printed is
read from the tool output codex sent back to the model (what a real model
would see, and what the client would see on the command's card).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_bridge.service import child_launch
from fixtures.codex_home import write_codex_home
from fixtures.scenarios import tool_output_text
from fixtures.scripted_model import ScriptedModelServer
from supervisor.reaper import descendants
from tests.helpers import RunningService, describe_processes, make_settings, running_service

pytestmark = pytest.mark.real_codex
TIMEOUT_S = 120

#: Secrets an operator's environment commonly holds: none may reach a command.
SECRETS = {
    "OPENAI_API_KEY": "sk-service-openai-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "DB_PASSWORD": "db-password-value",
    "GITHUB_TOKEN": "ghp-token-value",
    "CODEX_BRIDGE_ADMIN_TOKEN": "admin-token-value",
    "MY_PRIVATE_KEY_PATH": "/secret/key/path",
    "SESSION_AUTH": "auth-cookie-value",
}


async def run_command(
    svc: RunningService, model: ScriptedModelServer, cmd: str, *, key: str | None = None
) -> str:
    """Have the model run ``cmd``; the tool output codex handed back to it."""
    before = len(model.model.requests)
    headers = {"X-Conversation-Id": key} if key else {}
    marker = f"[scenario:exec login=0 cmd={shlex.quote(cmd)}]"
    response = await svc.client.post(
        "/v1/chat/completions",
        json={
            "model": "scripted-model",
            "stream": False,
            "messages": [{"role": "user", "content": f"{marker} go"}],
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    outputs = [
        tool_output_text(item)
        for request in model.model.requests[before:]
        for item in request.body["input"]
        if item.get("type") == "function_call_output"
    ]
    assert outputs, f"codex ran no command for {cmd!r}"
    return outputs[-1]


def printed(tool_output: str) -> str:
    """What the command itself printed (codex frames it with chunk/exit lines)."""
    return tool_output.split("Output:\n", 1)[-1]


async def hardened_service(
    tmp_path: Path, codex_bin: Path, model: ScriptedModelServer, **settings: Any
) -> tuple[Any, dict[str, str]]:
    config_file = tmp_path / "bridge.toml"
    config_file.write_text('admin_token = "admin-token-in-the-config-file"\n')
    config = make_settings(
        tmp_path, codex_bin=str(codex_bin), config_file=str(config_file), **settings
    )
    environ = {**os.environ, **SECRETS}
    environ.update(write_codex_home(config.codex_home_path, model.base_url))
    (config.codex_home_path / "auth.json").write_text('{"OPENAI_API_KEY": "sk-in-auth-json"}')
    return running_service(config, child_launch(config, environ=environ)), environ


async def test_commands_see_no_secret_of_the_service_environment(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    service, environ = await hardened_service(tmp_path, codex_bin, scripted_model)
    with trio.fail_after(TIMEOUT_S):
        async with service as svc:
            plain = printed(await run_command(svc, scripted_model, "env"))
            login = printed(await run_command(svc, scripted_model, "bash -lc env"))
            child_env = svc.handle.pool.launch.env
    for shown in (plain, login):
        names = {line.split("=", 1)[0] for line in shown.splitlines() if "=" in line}
        for name, value in SECRETS.items():
            assert name not in names
            assert value not in shown
        assert "SCRIPTED_MODEL_API_KEY" not in names  # the provider's key: codex's only
        assert not any(name.startswith("CODEX_BRIDGE_") for name in names)
    print("\nvariables a command sees:", " ".join(sorted(names)))
    # codex itself gets the provider's key, and nothing of the bridge's own
    assert child_env["SCRIPTED_MODEL_API_KEY"] == environ["SCRIPTED_MODEL_API_KEY"]
    assert not set(SECRETS) & set(child_env)


async def test_commands_cannot_read_the_secrets_or_leave_their_workspace(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    service, _ = await hardened_service(tmp_path, codex_bin, scripted_model)
    results: dict[str, str] = {}
    with trio.fail_after(TIMEOUT_S):
        async with service as svc:
            settings = svc.handle.pool.launch
            home = Path(settings.codex_home)
            workspace = await trio.Path(tmp_path / "workspace").resolve()
            state = await trio.Path(tmp_path / "state" / "conversations.sqlite3").resolve()
            # conversation A leaves a file in its workspace; B tries to get at it
            await run_command(svc, scripted_model, "echo a-private-note > note.txt", key="A")
            (a_dir,) = await (workspace / "conversations").iterdir()
            probes = {
                "read CODEX_HOME/auth.json": f"cat {home / 'auth.json'}",
                "read CODEX_HOME/config.toml": f"cat {home / 'config.toml'}",
                "list CODEX_HOME/sessions": f"ls {home / 'sessions'}",
                "read the state database": f"head -c 16 {state}",
                "read the bridge config file": f"cat {tmp_path / 'bridge.toml'}",
                "read another conversation's file": f"cat {a_dir / 'note.txt'}",
                "list the conversations": f"ls {workspace / 'conversations'}",
                "write /tmp": "echo x > /tmp/codex-bridge-probe && echo WROTE",
                "write TMPDIR": 'echo x > "${TMPDIR:-/tmp}/codex-bridge-probe" && echo WROTE',
                "write another conversation": f"echo x > {a_dir / 'evil.txt'} && echo WROTE",
                "network to the service": (
                    f"exec 3<>/dev/tcp/127.0.0.1/{svc.url.rsplit(':', 1)[1]} && echo CONNECTED"
                ),
                "read the service's environment": f"cat /proc/{os.getpid()}/environ",
            }
            for what, cmd in probes.items():
                results[what] = printed(await run_command(svc, scripted_model, cmd, key="B"))
            own_cmd = "echo mine > own.txt && cat own.txt"
            own = printed(await run_command(svc, scripted_model, own_cmd, key="B"))
    print()
    for what, shown in results.items():
        print(f"  {what:34} -> {shown.strip().splitlines()[-1] if shown.strip() else '(nothing)'}")
    assert "sk-in-auth-json" not in results["read CODEX_HOME/auth.json"]
    assert "model_provider" not in results["read CODEX_HOME/config.toml"]
    assert "SQLite format" not in results["read the state database"]
    assert "admin-token-in-the-config-file" not in results["read the bridge config file"]
    assert "a-private-note" not in results["read another conversation's file"]
    for what in ("write /tmp", "write TMPDIR", "write another conversation"):
        assert "WROTE" not in results[what], what
    assert "CONNECTED" not in results["network to the service"]
    assert "SECRET" not in results["read the service's environment"]
    assert not await trio.Path(a_dir / "evil.txt").exists()
    assert not await trio.Path("/tmp/codex-bridge-probe").exists()
    assert own.strip().endswith("mine")  # its own workspace stays writable


async def test_no_sandbox_helper_is_left_running_between_turns(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """codex leaves some of its sandboxed file helpers orphaned; none may pile up."""
    service, _ = await hardened_service(tmp_path, codex_bin, scripted_model)
    with trio.fail_after(TIMEOUT_S):
        async with service as svc:
            for i in range(12):
                await run_command(svc, scripted_model, f"echo {i}")
            await trio.sleep(4)  # past the guardian's grace (2 s) and scan (1 s) for orphans
            (child,) = svc.handle.pool.children
            assert child.pid is not None
            below_codex = set(descendants(child.pid)) | {child.pid}
            guardian = _parent(child.pid)
            strays = describe_processes(
                [pid for pid in descendants(guardian) if pid not in below_codex]
            )
    assert strays == []


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


async def test_instructions_come_from_codex_home_never_from_a_workspace(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """An AGENTS.md in a conversation's directory could only have been written
    by the model's own commands: it must not become instructions."""
    service, _ = await hardened_service(tmp_path, codex_bin, scripted_model)
    (Path(tmp_path / "codex-home") / "AGENTS.md").write_text("OPERATOR-INSTRUCTIONS-MARKER\n")
    with trio.fail_after(TIMEOUT_S):
        async with service as svc:
            await run_command(
                svc, scripted_model, "echo PLANTED-INSTRUCTIONS-MARKER > AGENTS.md", key="C"
            )
            await run_command(svc, scripted_model, "cat AGENTS.md", key="C")
            # a new thread in the same directory (the conversation's edited history)
            response = await svc.client.post(
                "/v1/chat/completions",
                json={
                    "model": "scripted-model",
                    "stream": False,
                    "messages": [{"role": "user", "content": "[scenario:plain] new thread"}],
                },
                headers={"X-Conversation-Id": "C"},
            )
            assert response.status_code == 200
    bodies = [str(request.body) for request in scripted_model.model.requests]
    assert all("OPERATOR-INSTRUCTIONS-MARKER" in body for body in bodies)
    assert "PLANTED-INSTRUCTIONS-MARKER" not in bodies[-1]  # the new thread's first request
