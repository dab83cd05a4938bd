"""``codex-bridge pool …``: the admin API from a shell.

Finds the running service through ``CODEX_BRIDGE_URL`` (default: built from
the configured host and port) and authenticates with the configured
``admin_token``, if any. Prints a table for people, JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

from .config import ConfigError, Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3


def add_pool_commands(commands: Any) -> None:
    pool = commands.add_parser(
        "pool",
        help="inspect and control the pool of a running service",
        description="Talk to a running service's /admin/ API (CODEX_BRIDGE_URL, default "
        "http://<host>:<port> from the configuration).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="service URL (default: CODEX_BRIDGE_URL or the config)")
    common.add_argument("--config", metavar="FILE", help="TOML config file (host, port, token)")
    common.add_argument("--json", action="store_true", help="print the JSON answer")
    actions = pool.add_subparsers(dest="action", required=True)
    actions.add_parser("status", parents=[common], help="state of every child")
    restart = actions.add_parser(
        "restart", parents=[common], help="drain and replace one child, or all in turn"
    )
    restart.add_argument("child", nargs="?", help="child name or slot number (default: all)")
    restart.add_argument("--no-wait", action="store_true", help="return once started")
    rolling = actions.add_parser(
        "rolling-restart", parents=[common], help="replace every child, one at a time"
    )
    rolling.add_argument("--no-wait", action="store_true", help="return once started")
    for verb, text in (("drain", "stop giving out turns"), ("undrain", "give out turns again")):
        action = actions.add_parser(
            verb, parents=[common], help=f"{text} (one child, or the whole pool)"
        )
        action.add_argument("child", nargs="?", help="child name or slot number (default: all)")


def _service(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    settings: Settings = load_settings(config_file=args.config)
    url = args.url or os.environ.get("CODEX_BRIDGE_URL")
    if not url:
        host = settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        url = (
            f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"
        )
    headers = {"authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
    return url.rstrip("/"), headers


def _render(status: dict[str, Any]) -> str:
    auth_problem = status.get("auth_problem")
    children = f"{status['ready']}/{status['size']} " + (
        "running, NOT READY: codex is not logged in" if auth_problem else "ready"
    )
    lines = [
        f"pool: {children}, {status['active_turns']} turns running, {status['queued']} queued"
        + (", DRAINED" if status.get("paused") else "")
        + (", rolling restart in progress" if status.get("rolling_restart") else "")
        + ("" if status.get("accepting", True) else ", shutting down"),
        "",
        f"{'slot':<5}{'name':<12}{'state':<10}{'pid':>8}{'load':>6}{'turns':>7}{'threads':>8}"
        f"{'rss MiB':>9}{'uptime':>9}{'restarts':>9}  last exit",
    ]
    for child in status["children"]:
        uptime = child.get("uptime_s")
        rss = child.get("rss_mib")
        state = child.get("state", "-")
        if child.get("breaker") == "open":
            state = "breaker"
        elif child.get("auth_problem") and state in ("idle", "busy"):
            state = "no login"
        lines.append(
            f"{child['slot']:<5}{child.get('name', '-'):<12}{state:<10}"
            f"{child.get('pid') or '-':>8}{child.get('load', 0):>6}"
            f"{child.get('turns_served', 0):>7}{child.get('threads_owned', 0):>8}"
            f"{'-' if rss is None else f'{rss:.0f}':>9}"
            f"{'-' if uptime is None else f'{uptime:.0f}s':>9}{child['restarts']:>9}"
            f"  {child.get('last_exit_reason') or '-'}"
        )
    if auth_problem:
        lines += ["", f"not ready: {auth_problem}"]
    return "\n".join(lines)


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def run_pool_command(args: argparse.Namespace) -> int:
    try:
        base, headers = _service(args)
    except ConfigError as exc:
        print(f"codex-bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    child = getattr(args, "child", None)
    action = args.action
    if action == "restart" and child is None:
        action = "rolling-restart"
    if action == "status":
        method, path = "GET", "/admin/pool"
    elif action == "rolling-restart":
        method, path = "POST", "/admin/pool/rolling-restart"
    elif child is None:
        method, path = "POST", f"/admin/pool/{action}"
    else:
        method, path = "POST", f"/admin/children/{child}/{action}"
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            response = client.request(method, path)
            if response.status_code >= 400:
                print(f"codex-bridge: {_error_text(response)}", file=sys.stderr)
                return EXIT_FAILED
            status = response.json()
            if action in ("restart", "rolling-restart") and not getattr(args, "no_wait", False):
                status = _wait_for_restart(client, status, child, args.json)
    except httpx.TransportError as exc:
        print(f"codex-bridge: cannot reach the service at {base}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(status, indent=2) if args.json else _render(status))
    return EXIT_OK


def _wait_for_restart(
    client: httpx.Client, status: dict[str, Any], child: str | None, quiet: bool
) -> dict[str, Any]:
    """Poll until the restart is over: the slot's new child ready, or the
    rolling restart done (or the slot's breaker open: nothing more to wait for)."""
    old, slot = status.get("child"), status.get("slot")
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get("/admin/pool").json()
        if child is None:
            if not status["rolling_restart"]:
                return status
        else:
            now = status["children"][slot]
            if now.get("breaker") == "open" or (
                now.get("name") != old and now.get("state") in ("idle", "busy")
            ):
                return status
        if not quiet:
            print(".", end="", file=sys.stderr, flush=True)
    return status
