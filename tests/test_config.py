from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.codex import ApprovalPolicy
from codex_bridge.cli import main
from codex_bridge.config import ConfigError, Settings, load_settings


def test_defaults_bind_loopback_with_two_children(tmp_path: Path) -> None:
    settings = load_settings(environ={"HOME": str(tmp_path)})
    assert settings.host == "127.0.0.1"
    assert settings.pool_size == 2
    assert settings.approval_policy is ApprovalPolicy.DECLINE


def test_codex_home_defaults_to_the_users_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CODEX_HOME", raising=False)
    assert Settings().codex_home == str(Path.home() / ".codex")
    monkeypatch.setenv("CODEX_HOME", "/srv/codex")
    assert Settings().codex_home == "/srv/codex"


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        'host = "0.0.0.0"\nallow_unauthenticated = true\n'
        'port = 9000\npool_size = 3\napproval_policy = "accept"\n'
    )
    env = {"CODEX_BRIDGE_PORT": "9001", "CODEX_BRIDGE_CODEX_HOME": "/srv/codex"}
    settings = load_settings(config_file=config, environ=env, overrides={"pool_size": 5})
    assert settings.host == "0.0.0.0"  # file
    assert settings.port == 9001  # environment beats file
    assert settings.codex_home == "/srv/codex"
    assert settings.pool_size == 5  # flag beats both
    assert settings.approval_policy is ApprovalPolicy.ACCEPT


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("pool_size = 4\n")
    settings = load_settings(environ={"CODEX_BRIDGE_CONFIG": str(config)})
    assert settings.pool_size == 4


def test_environment_types(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "CODEX_BRIDGE_SUBREAPER": "no",
            "CODEX_BRIDGE_TURN_IDLE_TIMEOUT_S": "2.5",
            "CODEX_BRIDGE_DEFAULT_MODEL": "",
            "CODEX_BRIDGE_CODEX_BIN": "/opt/codex",
        }
    )
    assert settings.subreaper is False
    assert settings.turn_idle_timeout_s == 2.5
    assert settings.default_model is None
    assert settings.codex_bin == "/opt/codex"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environ": {"CODEX_BRIDGE_PORT": "eighty"}}, "'port' (from CODEX_BRIDGE_PORT)"),
        ({"environ": {"CODEX_BRIDGE_PORT": "70000"}}, "'port' (from CODEX_BRIDGE_PORT)"),
        ({"environ": {"CODEX_BRIDGE_POOL_SIZE": "0"}}, "'pool_size' (from CODEX_BRIDGE_POOL_SIZE)"),
        ({"environ": {"CODEX_BRIDGE_SUBREAPER": "maybe"}}, "'subreaper'"),
        ({"environ": {"CODEX_BRIDGE_APPROVAL_POLICY": "sure"}}, "'approval_policy'"),
        ({"environ": {"CODEX_BRIDGE_POOLSIZE": "2"}}, "CODEX_BRIDGE_POOLSIZE"),
        ({"environ": {"CODEX_BRIDGE_HOST": " "}}, "'host' (from CODEX_BRIDGE_HOST)"),
        ({"environ": {}, "overrides": {"port": -1}}, "'port' (from --port)"),
        ({"environ": {}, "overrides": {"log_level": "loud"}}, "'log_level' (from --log-level)"),
    ],
)
def test_bad_values_name_the_setting_and_source(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pool_size = 'two'\n", "'pool_size' (from config file"),
        ("port = 1.5\n", "'port' (from config file"),
        ("pool_sise = 2\n", "unknown setting 'pool_sise'"),
        ("host = 3\n", "'host' (from config file"),
        ("subreaper = 'yes'\n", "'subreaper'"),
        ("port = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, environ={})
    assert message in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_file=tmp_path / "absent.toml", environ={})


def test_cli_refuses_a_bad_value_at_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--pool-size", "0", "--codex-bin", sys.executable])
    assert info.value.code == 1
    assert "invalid setting 'pool_size' (from --pool-size)" in capsys.readouterr().err


def test_cli_refuses_a_missing_codex_binary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--codex-bin", str(tmp_path / "nope")])
    assert info.value.code == 1
    assert "invalid setting 'codex_bin'" in capsys.readouterr().err


def test_console_script_help_lists_the_options() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "codex-bridge"), "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for option in ("--host", "--port", "--pool-size", "--config", "--codex-bin", "--codex-home"):
        assert option in result.stdout
