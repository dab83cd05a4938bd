from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import attrs
import pytest

from bridge.codex import ApprovalPolicy
from codex_bridge import cli
from codex_bridge.cli import _parser, main
from codex_bridge.config import (
    FILE_ONLY_SETTINGS,
    ConfigError,
    Settings,
    load_settings,
    setting_specs,
)
from http_front.access import hash_key


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


# --- every setting is a flag of serve ------------------------------------

#: Values the parser must take for settings whose text is restricted.
_SAMPLE_TEXT = {
    "reasoning_format": "think",
    "status_events": "never",
    "default_reasoning_effort": "high",
    "reasoning_summary": "concise",
    "sandbox_mode": "read-only",
    "approval_policy": "accept-read-only",
    "conversation_busy": "reject",
    "log_level": "debug",
    "log_format": "json",
    "client_tools": "never",
}


def _setting_fields() -> list[attrs.Attribute[object]]:
    """The flat settings: not config_file, nor the file's tables (aliases)."""
    return [
        field
        for field in attrs.fields(Settings)
        if field.name != "config_file" and field.name not in FILE_ONLY_SETTINGS
    ]


def test_every_setting_has_a_serve_flag() -> None:
    hints = typing.get_type_hints(Settings)
    parser = _parser()
    for field in _setting_fields():
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        argv: list[str]
        expected: object
        if hint is bool:
            argv, expected = [flag], True
            negated = parser.parse_args(["serve", "--no-" + flag[2:]])
            assert getattr(negated, field.name) is False, flag
        elif hint is int:
            argv, expected = [flag, "7"], 7
        elif hint is float:
            argv, expected = [flag, "2.5"], 2.5
        else:
            text = _SAMPLE_TEXT.get(field.name, "a,b")
            argv, expected = [flag, text], text
        args = parser.parse_args(["serve", *argv])
        assert getattr(args, field.name) == expected, flag
        assert type(getattr(args, field.name)) is type(expected), flag


def test_a_flag_not_given_overrides_nothing() -> None:
    args = _parser().parse_args(["serve"])
    overrides = cli.setting_overrides(args)
    assert set(overrides) == {field.name for field in _setting_fields()}
    assert set(overrides.values()) == {None}


def test_every_flag_has_help_from_the_settings_comments() -> None:
    specs = {spec.name: spec for spec in setting_specs()}
    assert set(specs) == {field.name for field in _setting_fields()}
    for spec in specs.values():
        assert spec.doc, f"{spec.name} has no #: comment"
    assert specs["reasoning_format"].doc.startswith("reasoning_content (a separate field)")
    assert specs["liveness_timeout_s"].doc == "How long a child has to answer its liveness request."
    assert specs["api_keys"].secret
    assert "CODEX_BRIDGE_API_KEYS" in cli._flag_help(specs["api_keys"])


def _serve(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str] | None = None
) -> tuple[int | str | None, list[Settings]]:
    """``main(["serve", *argv])`` up to the point the service would start."""
    for var in list(os.environ):
        if var.startswith("CODEX_BRIDGE_"):
            monkeypatch.delenv(var)
    for var, value in (env or {}).items():
        monkeypatch.setenv(var, value)
    seen: list[Settings] = []

    def launch(settings: Settings) -> object:
        seen.append(settings)
        return object()

    monkeypatch.setattr(cli, "child_launch", launch)
    monkeypatch.setattr(cli, "run_or_fail", lambda service: cli.EXIT_OK)
    monkeypatch.setattr(cli, "configure_logging", lambda level, log_format: None)
    with pytest.raises(SystemExit) as info:
        main(["serve", *argv])
    return info.value.code, seen


def _settings(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str] | None = None
) -> Settings:
    code, seen = _serve(monkeypatch, argv, env)
    assert code == 0
    (settings,) = seen
    return settings


def test_flags_reach_the_settings_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        [
            "--queue-size", "7",
            "--turn-retry-timeout-s", "2.5",
            "--command-network",
            "--no-subreaper",
            "--cors-origins", "https://a.example, https://b.example:8443",
            "--child-env", "HTTP_PROXY,LC_*",
            "--api-keys", "ci:sk-ci-7d2b9c41,sk-bare-3f1c8a9e",
            "--approval-policy", "accept-read-only",
            "--default-reasoning-effort", "high",
            "--reasoning-format", "think",
            "--admin-token", "adm-5e1f0c",
            "--state-url", "redis://127.0.0.1:6379/2",
        ],
    )  # fmt: skip
    assert settings.queue_size == 7
    assert settings.turn_retry_timeout_s == 2.5
    assert settings.command_network is True
    assert settings.subreaper is False
    assert settings.cors_origins == ("https://a.example", "https://b.example:8443")
    assert settings.child_env == ("HTTP_PROXY", "LC_*")
    assert [(key.name, key.digest) for key in settings.api_keys] == [
        ("ci", hash_key("sk-ci-7d2b9c41")),
        ("key-2", hash_key("sk-bare-3f1c8a9e")),
    ]
    assert settings.approval_policy is ApprovalPolicy.ACCEPT_READ_ONLY
    assert settings.default_reasoning_effort == "high"
    assert settings.reasoning_format == "think"
    assert settings.admin_token == "adm-5e1f0c"
    assert settings.state_url == "redis://127.0.0.1:6379/2"
    # and what was not given keeps its default
    assert settings.pool_size == 2
    assert settings.allow_unauthenticated is False


def test_an_empty_flag_unsets_an_optional_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('task_model = "gpt-file"\n')
    env = {"CODEX_BRIDGE_DEFAULT_MODEL": "gpt-env"}
    kept = _settings(monkeypatch, ["--config", str(config)], env)
    assert (kept.default_model, kept.task_model) == ("gpt-env", "gpt-file")
    unset = _settings(
        monkeypatch, ["--config", str(config), "--default-model", "", "--task-model", ""], env
    )
    assert (unset.default_model, unset.task_model) == (None, None)


def test_flag_beats_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        "port = 9000\npool_size = 3\nqueue_size = 5\nsubreaper = false\n"
        'cors_origins = ["https://file.example"]\nrecycle_rss_mib = 100.0\n'
    )
    env = {
        "CODEX_BRIDGE_CONFIG": str(config),
        "CODEX_BRIDGE_PORT": "9001",
        "CODEX_BRIDGE_POOL_SIZE": "4",
        "CODEX_BRIDGE_CORS_ORIGINS": "https://env.example",
        "CODEX_BRIDGE_COMMAND_NETWORK": "true",
    }
    settings = _settings(
        monkeypatch,
        ["--pool-size", "6", "--cors-origins", "https://flag.example", "--no-command-network"],
        env,
    )
    assert settings.queue_size == 5  # file
    assert settings.subreaper is False  # file: --subreaper not given
    assert settings.recycle_rss_mib == 100.0
    assert settings.port == 9001  # environment beats file
    assert settings.pool_size == 6  # flag beats both
    assert settings.cors_origins == ("https://flag.example",)
    assert settings.command_network is False  # --no-x beats x=true
    again = _settings(monkeypatch, ["--subreaper", "--port", "9002"], env)
    assert again.subreaper is True
    assert again.port == 9002
    assert again.pool_size == 4


def test_a_bad_list_flag_names_it_and_echoes_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, seen = _serve(monkeypatch, ["--api-keys", "bad name:sk-secret-4b1d9e"])
    assert (code, seen) == (1, [])
    err = capsys.readouterr().err
    assert "invalid setting 'api_keys' (from --api-keys)" in err
    assert "sk-secret-4b1d9e" not in err
    code, seen = _serve(monkeypatch, ["--cors-origins", "*"])
    assert (code, seen) == (1, [])
    assert "invalid setting 'cors_origins'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--default-reasoning-effort", "loud"],
        ["--queue-timeout-s", "soon"],
        ["--sandbox-mode", "none"],
        ["--subreaper=yes"],
    ],
)
def test_a_flag_of_the_wrong_type_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    code, seen = _serve(monkeypatch, argv)
    assert (code, seen) == (2, [])


def test_aliases_are_tables_of_the_file_only(tmp_path: Path) -> None:
    """Not a flat setting: no flag, no environment variable, no flag help."""
    assert "aliases" not in {spec.name for spec in setting_specs()}
    assert "--aliases" not in _parser().format_help()
    with pytest.raises(ConfigError, match="'aliases' can only be set in the config file"):
        load_settings(environ={"CODEX_BRIDGE_ALIASES": "coder"})
    config = tmp_path / "bridge.toml"
    config.write_text('pool_size = 3\n[aliases.coder]\nmodel = "gpt-5.5"\n')
    settings = load_settings(config_file=config, environ={})
    assert settings.pool_size == 3
    assert [(a.name, a.model) for a in settings.aliases] == [("coder", "gpt-5.5")]
