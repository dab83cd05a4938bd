"""``codex-bridge`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from typing import Any

import trio

from .admin_cli import add_pool_commands, run_pool_command
from .codex_binary import CodexBinaryNotFound
from .config import ConfigError, Settings, load_settings
from .service import child_launch, run_service


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codex-bridge",
        description="OpenAI-compatible HTTP API in front of a pool of codex app-server processes.",
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
    return 2


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
    failure: str | None = None
    try:
        trio.run(partial(run_service, settings, launch=launch, handle_signals=True))
    except* OSError as group:
        failure = f"cannot serve on {settings.host}:{settings.port}: {group.exceptions[0]}"
    return _fail(failure) if failure else 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        sys.exit(serve(args))
    if args.command == "pool":
        sys.exit(run_pool_command(args))
