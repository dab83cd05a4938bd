"""The command policy without codex: environments, codex overrides, the sandbox check."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest
import trio

from codex_bridge.config import ConfigError, load_settings
from codex_bridge.service import child_launch, command_policy
from supervisor.command_policy import (
    CommandPolicy,
    SandboxUnavailable,
    check_sandbox,
    child_environment,
    link_bundled_bwrap,
    provider_env_keys,
)
from tests.helpers import (
    LineLog,
    fake,
    make_settings,
    running_service,
)

SERVICE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/svc",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HTTPS_PROXY": "http://proxy:3128",
    "OPENAI_API_KEY": "sk-service",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "DB_PASSWORD": "pw",
    "CODEX_BRIDGE_ADMIN_TOKEN": "admin",
    "CODEX_BRIDGE_API_KEYS": "ci:key",
    "MY_PROVIDER_KEY": "provider-secret",
    "MY_HEADER_VALUE": "header-value",
    "UNRELATED": "x",
    "EXTRA_ONE": "1",
}


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def test_provider_keys_are_read_from_codex_config(tmp_path: Path) -> None:
    home = write_config(
        tmp_path,
        """
model_provider = "mine"
[model_providers.mine]
env_key = "MY_PROVIDER_KEY"
env_http_headers = { "X-Extra" = "MY_HEADER_VALUE" }
[model_providers.other]
name = "no key here"
""",
    )
    assert provider_env_keys(home) == {"MY_PROVIDER_KEY", "MY_HEADER_VALUE"}
    assert provider_env_keys(tmp_path / "missing") == set()
    write_config(tmp_path / "bad", "this is = = not toml")
    assert provider_env_keys(tmp_path / "bad") == set()


def test_a_child_gets_an_allowlist_of_the_service_environment(tmp_path: Path) -> None:
    home = write_config(tmp_path, '[model_providers.mine]\nenv_key = "MY_PROVIDER_KEY"\n')
    env = child_environment(
        SERVICE_ENV, codex_home=home, passed=["EXTRA_*"], path_first=tmp_path / "bin"
    )
    assert env == {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin",
        "HOME": "/home/svc",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "MY_PROVIDER_KEY": "provider-secret",
        "EXTRA_ONE": "1",
        "CODEX_HOME": str(home),
    }


def test_no_bridge_setting_reaches_a_child_even_when_named(tmp_path: Path) -> None:
    env = child_environment(SERVICE_ENV, codex_home=tmp_path, passed=["CODEX_BRIDGE_*", "*"])
    assert not any(name.startswith("CODEX_BRIDGE_") for name in env)


def _overrides(policy: CommandPolicy) -> dict[str, object]:
    """The ``-c key=value`` pairs, parsed back as codex parses them (TOML)."""
    args = policy.codex_args()
    assert args[::2] == ["-c"] * (len(args) // 2)
    parsed: dict[str, object] = {}
    for pair in args[1::2]:
        key, _, value = pair.partition("=")
        parsed[key] = tomllib.loads(f"v = {value}")["v"]
    return parsed


def test_the_default_policy_confines_commands(tmp_path: Path) -> None:
    policy = CommandPolicy(
        denied=(tmp_path / "codex-home", tmp_path / "state.sqlite3"),
        command_home=tmp_path / "home",
    )
    overrides = _overrides(policy)
    profile = policy.profile
    assert profile.startswith("codex-bridge-")
    assert overrides["default_permissions"] == profile
    assert overrides[f"permissions.{profile}.filesystem"] == {
        ":root": "read",
        ":project_roots": {".": "write"},
        str(tmp_path / "codex-home"): "none",
        str(tmp_path / "state.sqlite3"): "none",
        str(tmp_path / "home"): "read",
    }
    assert overrides[f"permissions.{profile}.network.enabled"] is False
    assert overrides["shell_environment_policy.inherit"] == "core"
    assert "*KEY*" in overrides["shell_environment_policy.exclude"]  # type: ignore[operator]
    assert overrides["shell_environment_policy.set.HOME"] == str(tmp_path / "home")
    # a thread's directory is not a project: no AGENTS.md from it, no root search
    assert overrides["project_root_markers"] == []
    assert overrides["project_doc_max_bytes"] == 0
    assert overrides["features.shell_snapshot"] is False
    # a new profile name at every start: config.toml cannot name it to widen it
    assert CommandPolicy(command_home=tmp_path).profile != profile


def test_read_only_network_and_no_sandbox(tmp_path: Path) -> None:
    read_only = CommandPolicy(sandbox_mode="read-only", network=True, command_home=tmp_path)
    overrides = _overrides(read_only)
    filesystem = overrides[f"permissions.{read_only.profile}.filesystem"]
    assert filesystem[":project_roots"] == {".": "read"}  # type: ignore[index]
    assert overrides[f"permissions.{read_only.profile}.network.enabled"] is True
    open_ = _overrides(CommandPolicy(sandbox_mode="danger-full-access", command_home=tmp_path))
    assert open_["sandbox_mode"] == "danger-full-access"
    assert "default_permissions" not in open_
    assert open_["shell_environment_policy.inherit"] == "core"  # secrets stay out anyway


def test_the_service_hides_its_own_files_from_commands(tmp_path: Path) -> None:
    config_file = tmp_path / "bridge.toml"
    config_file.write_text(f'sandbox_deny_paths = ["{tmp_path / "private"}"]\n')
    settings = load_settings(
        config_file=config_file,
        environ={},
        overrides={
            "codex_home": str(tmp_path / "codex-home"),
            "workspace_dir": str(tmp_path / "ws"),
            "state_url": f"sqlite:///{tmp_path / 'state' / 'db.sqlite3'}",
        },
    )
    denied = set(command_policy(settings).denied)
    state = tmp_path / "state" / "db.sqlite3"
    assert denied == {
        (tmp_path / "codex-home").resolve(),
        (tmp_path / "ws" / "conversations").resolve(),
        (tmp_path / "ws" / "scratch").resolve(),
        (tmp_path / "private").resolve(),
        config_file.resolve(),
        *(state.with_name(state.name + end).resolve() for end in ("", "-wal", "-shm", "-journal")),
    }


def test_settings_for_commands_come_from_every_source(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "CODEX_BRIDGE_CHILD_ENV": "HTTP_PROXY, PIP_INDEX_URL",
            "CODEX_BRIDGE_SANDBOX_MODE": "read-only",
            "CODEX_BRIDGE_COMMAND_NETWORK": "true",
        }
    )
    assert settings.child_env == ("HTTP_PROXY", "PIP_INDEX_URL")
    assert (settings.sandbox_mode, settings.command_network) == ("read-only", True)
    with pytest.raises(ConfigError, match="sandbox_mode"):
        load_settings(environ={"CODEX_BRIDGE_SANDBOX_MODE": "wide-open"})
    # where the settings came from is not itself a setting
    with pytest.raises(ConfigError, match=r"unknown setting .*CODEX_BRIDGE_CONFIG_FILE"):
        load_settings(environ={"CODEX_BRIDGE_CONFIG_FILE": "/x"})


def test_the_bundled_bubblewrap_goes_first_on_path(tmp_path: Path, codex_bin: Path) -> None:
    directory = link_bundled_bwrap(codex_bin, tmp_path / "bin")
    assert directory == tmp_path / "bin"
    link = directory / "bwrap"
    assert link.is_symlink()
    assert link.resolve().parent.name == "codex-resources"
    assert link_bundled_bwrap(codex_bin, tmp_path / "bin") == directory  # idempotent
    launch = child_launch(make_settings(tmp_path, codex_bin=str(codex_bin)), environ=SERVICE_ENV)
    assert launch.env["PATH"].split(os.pathsep)[0].endswith("bin")
    assert Path(launch.env["PATH"].split(os.pathsep)[0], "bwrap").exists()
    assert not any(name in launch.env for name in ("OPENAI_API_KEY", "DB_PASSWORD"))


def _fake_codex(tmp_path: Path, script: str) -> Path:
    binary = tmp_path / "codex"
    binary.write_text(f"#!{sys.executable}\n{script}\n")
    binary.chmod(0o755)
    return binary


async def test_the_sandbox_check_refuses_a_sandbox_that_does_not_run(tmp_path: Path) -> None:
    binary = _fake_codex(
        tmp_path, "import sys; sys.stderr.write('bwrap: no permission\\n'); sys.exit(1)"
    )
    policy = CommandPolicy(command_home=tmp_path)
    env = {"CODEX_HOME": str(tmp_path), "PATH": os.defpath}
    with trio.fail_after(30), pytest.raises(SandboxUnavailable, match="bwrap: no permission"):
        await check_sandbox(binary, policy, env, tmp_path)
    assert not await trio.Path(tmp_path, ".codex-bridge-sandbox-check").exists()  # removed


async def test_the_sandbox_check_refuses_a_sandbox_that_does_not_hide(tmp_path: Path) -> None:
    # runs whatever follows "--": the canary in CODEX_HOME is readable
    script = (
        "import subprocess, sys; sys.exit(subprocess.call(sys.argv[sys.argv.index('--') + 1:]))"
    )
    binary = _fake_codex(tmp_path, script)
    policy = CommandPolicy(command_home=tmp_path)
    env = {"CODEX_HOME": str(tmp_path), "PATH": os.defpath}
    with trio.fail_after(30), pytest.raises(SandboxUnavailable, match="does not hide"):
        await check_sandbox(binary, policy, env, tmp_path)


async def test_the_sandbox_check_passes_on_the_real_binary(tmp_path: Path, codex_bin: Path) -> None:
    settings = make_settings(tmp_path, codex_bin=str(codex_bin))
    launch = child_launch(settings, environ=os.environ)
    assert launch.command_policy is not None
    for directory in (settings.codex_home_path, tmp_path / "cwd"):
        await trio.Path(directory).mkdir(parents=True)
    with trio.fail_after(60):
        await check_sandbox(codex_bin, launch.command_policy, launch.env, tmp_path / "cwd")


async def test_no_sandbox_override_is_ever_sent_with_a_thread_or_turn(tmp_path: Path) -> None:
    """thread/start `sandbox` or turn/start `sandboxPolicy`/`permissions` would
    replace the profile the children run with."""
    log = LineLog()
    launch = fake("ok", tap=log)
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), launch) as svc:
            for headers in ({}, {"X-Conversation-Id": "c1"}, {"X-OpenWebUI-Task": "title"}):
                response = await svc.client.post(
                    "/v1/chat/completions",
                    json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                    headers=headers,
                )
                assert response.status_code == 200
    starts = log.sent("thread/start")
    turns = log.sent("turn/start")
    assert len(starts) == 3
    assert len(turns) == 3
    for message in starts:
        assert not {"sandbox", "permissions", "approvalPolicy"} & set(message["params"])
    for message in turns:
        assert not {"sandboxPolicy", "permissions", "approvalPolicy"} & set(message["params"])
    # every thread runs in a directory of its own
    cwds = [message["params"]["cwd"] for message in starts]
    assert len(set(cwds)) == 3
    assert all("/scratch/" in cwd or "/conversations/" in cwd for cwd in cwds)
