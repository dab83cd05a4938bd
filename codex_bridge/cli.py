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
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio

from supervisor.command_policy import SandboxUnavailable

from .admin_cli import add_pool_commands, run_pool_command
from .codex_binary import CodexBinaryNotFound, find_codex_binary
from .config import ConfigError, Settings, SettingSpec, load_settings, setting_specs
from .login import add_login_command, run_login
from .logs import configure_logging
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
        description="Run the service. Every setting is an option here (--pool-size), a key "
        "of the TOML config file (pool_size) and an environment variable "
        "(CODEX_BRIDGE_POOL_SIZE), with the same syntax; an option given wins over the "
        "environment, which wins over the file. A true/false setting is --x or --no-x; "
        "lists are comma-separated; an empty value unsets a setting whose default is none.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config file (CODEX_BRIDGE_CONFIG)")
    add_setting_flags(serve)
    add_login_command(commands)
    add_pool_commands(commands)
    return parser


def _optional_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A flag type: one of ``choices``, or empty (none)."""

    def parse(raw: str) -> str:
        if raw.strip() and raw not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {raw!r} (choose from {', '.join(choices)}, or '' for none)"
            )
        return raw

    return parse


def _flag_help(spec: SettingSpec) -> str:
    text = spec.doc.rstrip(".")
    if spec.name == "api_keys":
        text += "; comma-separated name:key entries, or bare keys (named key-1, key-2, ...)"
    elif spec.is_list:
        text += "; comma-separated"
    if spec.optional and spec.default is None:
        text += "; '' unsets it"
    where = [f"default: {spec.default}"] if spec.default is not None else []
    where.append(f"env {spec.env}")
    text += f" ({'; '.join(where)})."
    if spec.secret:
        text += (
            f" Prefer {spec.env} or the config file: a command line is visible to other "
            "users of the machine (ps)."
        )
    return text.replace("%", "%%")


def _metavar(spec: SettingSpec) -> str | None:
    if spec.choices is not None:
        return "{" + ",".join(spec.choices) + "}"
    if spec.name == "api_keys":
        return "NAME:KEY,..."
    if spec.is_list:
        return "A,B,..."
    if spec.kind == "float" and spec.name.endswith("_s"):
        return "SECONDS"
    if spec.kind in ("int", "float"):
        return "N"
    return None


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (:func:`~codex_bridge.config.setting_specs`).

    ``--pool-size N``; ``--subreaper``/``--no-subreaper`` for a true/false
    setting. A flag not given is None, which overrides nothing.
    """
    for spec in setting_specs():
        options: dict[str, Any] = {"dest": spec.name, "default": None, "help": _flag_help(spec)}
        if spec.kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["metavar"] = _metavar(spec)
            if spec.kind == "int":
                options["type"] = int
            elif spec.kind == "float":
                options["type"] = float
            elif spec.choices is not None and spec.optional:
                options["type"] = _optional_choice(spec.choices)
            elif spec.choices is not None:
                options["choices"] = spec.choices
        parser.add_argument(spec.flag, **options)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (None: not given)."""
    return {spec.name: getattr(args, spec.name) for spec in setting_specs()}


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


def serve(args: argparse.Namespace) -> int:
    overrides = setting_overrides(args)
    try:
        settings: Settings = load_settings(config_file=args.config, overrides=overrides)
        launch = child_launch(settings)
    except (ConfigError, CodexBinaryNotFound) as exc:
        return _fail(str(exc))
    configure_logging(settings.log_level, settings.log_format)
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
