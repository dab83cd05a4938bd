"""``codex-bridge`` command line.

Exit status: 0 on success; 1 when the command could not do its job (a bad
setting, no codex binary, a port that cannot be listened on; the message is
one line on stderr, ``codex-bridge: error: …``); 2 for a command line argparse
refuses (usage errors, by convention); ``pool`` commands use 3 when the
service cannot be reached; ``login`` exits with codex's own status.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from supervisor.command_policy import SandboxUnavailable

from .admin_cli import add_pool_commands, run_pool_command
from .codex_binary import CodexBinaryNotFound, find_codex_binary
from .config import ConfigError, Settings, load_settings
from .login import add_login_command, run_login
from .service import ListenError, child_launch, run_service

EXIT_OK, EXIT_FAILED = 0, 1


def project_version() -> str:
    try:
        return importlib.metadata.version("codex-bridge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def codex_version() -> str | None:
    """``codex --version`` of the binary the service would run, if it is found."""
    try:
        binary = find_codex_binary(load_settings().codex_bin)
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (ConfigError, CodexBinaryNotFound, OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def version_line() -> str:
    codex = codex_version()
    return f"codex-bridge {project_version()} ({codex or 'codex binary not found'})"


class _VersionAction(argparse.Action):
    """``--version``, worked out only when asked for (it runs the codex binary)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_line())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codex-bridge",
        description="OpenAI-compatible HTTP API in front of a pool of codex app-server processes.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the version of codex-bridge and of the codex binary, and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the service. Every option can also be set in the TOML config file "
        "(key = option name with underscores) or the environment (CODEX_BRIDGE_<NAME>).",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config file (CODEX_BRIDGE_CONFIG)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8088)")
    serve.add_argument("--pool-size", type=int, help="warm codex children (default 2)")
    serve.add_argument("--codex-bin", help="native codex binary (default: from node_modules)")
    serve.add_argument("--codex-home", help="CODEX_HOME for the children (default ~/.codex)")
    serve.add_argument("--workspace-dir", help="working directory of codex threads")
    serve.add_argument("--default-model", help="model when a request names none")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    add_login_command(commands)
    add_pool_commands(commands)
    return parser


_SETTING_FLAGS = (
    "host",
    "port",
    "pool_size",
    "codex_bin",
    "codex_home",
    "workspace_dir",
    "default_model",
    "log_level",
)


def _fail(message: str) -> int:
    print(f"codex-bridge: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return where + exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {key: getattr(args, key) for key in _SETTING_FLAGS}
    try:
        settings: Settings = load_settings(config_file=args.config, overrides=overrides)
        launch = child_launch(settings)
    except (ConfigError, CodexBinaryNotFound) as exc:
        return _fail(str(exc))
    configure_logging(settings.log_level)
    return run_or_fail(partial(run_service, settings, launch=launch, handle_signals=True))


def run_or_fail(service: Callable[[], Awaitable[object]]) -> int:
    """``trio.run(service)``; a failure to start is one line on stderr and exit 1.

    By the time this returns every child the service started has been
    stopped and reaped (``run_service`` owns them in its nursery).
    """
    failure: str | None = None
    try:
        trio.run(service)
    except* (ListenError, ConfigError, SandboxUnavailable) as group:
        failure = str(_first(group))
    except* OSError as group:
        failure = _describe_os_error(_first(group))
    return _fail(failure) if failure else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        sys.exit(serve(args))
    if args.command == "login":
        sys.exit(run_login(args))
    if args.command == "pool":
        sys.exit(run_pool_command(args))


if __name__ == "__main__":
    main()
