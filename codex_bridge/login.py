"""``codex-bridge login``: codex's own login, in the service's ``CODEX_HOME``.

The children run the pinned native codex binary with ``CODEX_HOME`` set from
the service's settings; a login only helps if it lands there. This command
resolves the home exactly as ``serve`` does (``--config``, ``CODEX_BRIDGE_*``,
``--codex-home``), then *replaces itself* with ``<codex> login …``: codex
owns the terminal (the device flow's prompts, an API key read from stdin,
Ctrl-C) and its exit code is the command's.

:func:`login_command` spells the command for messages that tell an operator
to log in: the absolute path of the installed console script, so that it
works as written even though ``make`` puts nothing on ``PATH``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .codex_binary import CodexBinaryNotFound, find_codex_binary
from .config import ConfigError, load_settings

#: Exit status of a command that could not run (bad settings, no binary).
EXIT_FAILED = 1


def bridge_command() -> str:
    """How to run ``codex-bridge`` from any shell, quoted for it.

    The console script next to the running interpreter (``.venv/bin`` after
    ``make``), else one on ``PATH``, else the module through this interpreter.
    """
    script = Path(sys.executable).parent / "codex-bridge"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    found = shutil.which("codex-bridge")
    if found:
        return shlex.quote(found)
    return f"{shlex.quote(sys.executable)} -m codex_bridge.cli"


def login_command(codex_home: str, *options: str) -> str:
    """The ``codex-bridge login`` command line that logs ``codex_home`` in.

    ``--codex-home`` is given unless the home is codex's own default
    (``~/.codex``), which ``codex-bridge login`` resolves by itself.
    """
    parts = [bridge_command(), "login"]
    if codex_home and Path(codex_home).expanduser() != Path.home() / ".codex":
        parts += ["--codex-home", shlex.quote(codex_home)]
    parts += [shlex.quote(option) for option in options]
    return " ".join(parts)


def api_key_login_command(codex_home: str) -> str:
    """Store the key of ``$OPENAI_API_KEY`` as codex's login."""
    return f"printenv OPENAI_API_KEY | {login_command(codex_home, '--with-api-key')}"


def not_authenticated_message(codex_home: str, unused_keys: Sequence[str] = ()) -> str:
    """What to tell an operator (and a client) when codex has no login.

    Names commands that work as written on the server (see
    :func:`login_command`).
    """
    home = codex_home or "~/.codex"
    text = (
        f"codex is not logged in (CODEX_HOME={home}), so it cannot reach a model. "
        f"On the server, run `{login_command(codex_home, '--device-auth')}` "
        f"(ChatGPT sign-in, from a browser on any machine) or "
        f"`{api_key_login_command(codex_home)}` (an API key), or configure a model "
        f"provider in {home}/config.toml. The service notices within seconds; "
        "no restart is needed."
    )
    if unused_keys:
        text += (
            f" An API key in the service's environment ({', '.join(unused_keys)}) is not "
            "enough: codex app-server reads only the login stored in CODEX_HOME."
        )
    return text


def add_login_command(commands: Any) -> None:
    login = commands.add_parser(
        "login",
        help="log codex in, in the service's CODEX_HOME",
        description="Run the pinned codex binary's own login with the CODEX_HOME the service "
        "uses (from --codex-home, CODEX_BRIDGE_CODEX_HOME, the config file, $CODEX_HOME or "
        "~/.codex, as for `serve`). A running service notices the new login within "
        "auth_recheck_interval_s; no restart needed. Exits with codex's exit status.",
    )
    login.add_argument("--config", metavar="FILE", help="TOML config file (CODEX_BRIDGE_CONFIG)")
    login.add_argument("--codex-home", help="CODEX_HOME to log in (default: as for serve)")
    login.add_argument("--codex-bin", help="native codex binary (default: from node_modules)")
    how = login.add_mutually_exclusive_group()
    how.add_argument(
        "--device-auth",
        action="store_true",
        help="sign in with ChatGPT using a one-time code, from a browser on any machine "
        "(without it codex opens a browser here and listens on localhost for the answer)",
    )
    how.add_argument(
        "--with-api-key",
        action="store_true",
        help="read an OpenAI API key from stdin, e.g. "
        "`printenv OPENAI_API_KEY | codex-bridge login --with-api-key`",
    )
    how.add_argument("--status", action="store_true", help="show whether codex is logged in")


def _codex_arguments(args: argparse.Namespace) -> list[str]:
    if args.status:
        return ["login", "status"]
    if args.with_api_key:
        return ["login", "--with-api-key"]
    if args.device_auth:
        return ["login", "--device-auth"]
    return ["login"]


def run_login(args: argparse.Namespace) -> int:
    """Exec ``<codex> login …``; returns only if that cannot be done."""
    overrides = {"codex_home": args.codex_home, "codex_bin": args.codex_bin}
    try:
        settings = load_settings(config_file=args.config, overrides=overrides)
        binary = find_codex_binary(settings.codex_bin)
    except (ConfigError, CodexBinaryNotFound) as exc:
        return _fail(str(exc))
    home = settings.codex_home_path
    try:
        home.mkdir(parents=True, exist_ok=True)  # codex refuses a home that does not exist
    except OSError as exc:
        return _fail(f"cannot create CODEX_HOME {home}: {exc.strerror}")
    argv = [str(binary), *_codex_arguments(args)]
    if not args.status:
        print(f"codex-bridge: logging codex in with CODEX_HOME={home}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(binary, argv, {**os.environ, "CODEX_HOME": str(home)})
    except OSError as exc:
        return _fail(f"cannot run {binary}: {exc.strerror}")
    return EXIT_FAILED  # not reached: execve returns only by raising


def _fail(message: str) -> int:
    print(f"codex-bridge: error: {message}", file=sys.stderr)
    return EXIT_FAILED
