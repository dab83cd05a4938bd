"""Operator endpoints under ``/admin/``: pool status, restarts, draining.

Guarded by a bearer token when ``admin_token`` is configured; without one,
only loopback clients are served (the service binds 127.0.0.1 by default),
and only when they address the service by a loopback name (``Host``
127.0.0.1, [::1] or localhost): a web page whose name was rebound to
127.0.0.1 reads nothing here. An API key never opens ``/admin/``. Web pages
of origins not allowed are refused before this app is reached (see
:mod:`http_front.access`).

    GET  /admin/pool                         status of every child
    POST /admin/pool/rolling-restart         replace every child, one by one (202)
    POST /admin/pool/drain | /undrain        stop / resume giving out turns
    POST /admin/children/{name}/restart      drain one child, replace it (202)
    POST /admin/children/{name}/drain        no new turns for it
    POST /admin/children/{name}/undrain      back in service

``GET /admin/`` is the operator's status page (``status_page.html``): it
holds no data, so it is served to whoever passes the Origin check, and the
page reads and acts through the endpoints above, under their rule (the token
it asks for on a 401 is kept in the tab's ``sessionStorage``). It loads
nothing from anywhere else; its Content-Security-Policy lets it run only its
own inline script and style (by hash) and talk only to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor import ChildRef, Supervisor, UnknownChild

from .access import client_is_loopback, require_loopback_host
from .errors import ApiError
from .response import Exchange
from .schema import JsonSchema, Operation
from .telemetry import VERSION, Telemetry

#: The operator's status page (shipped as package data, see pyproject.toml).
STATUS_PAGE = Path(__file__).with_name("status_page.html").read_bytes()
PAGE_CONTENT_TYPE = b"text/html; charset=utf-8"


def _inline_hashes(page: bytes, tag: bytes) -> str:
    """CSP sources allowing exactly the page's inline ``<tag>`` blocks."""
    blocks = re.findall(rb"<%b>(.*?)</%b>" % (tag, tag), page, re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'" for block in blocks
    )


def page_headers(page: bytes) -> list[tuple[bytes, bytes]]:
    """The page's headers besides its type and length: no caching, no
    framing, no referrer, and a CSP admitting only its own inline code."""
    csp = (
        f"default-src 'none'; script-src {_inline_hashes(page, b'script')}; "
        f"style-src {_inline_hashes(page, b'style')}; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return [
        (b"cache-control", b"no-store"),
        (b"content-security-policy", csp.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


STATUS_PAGE_HEADERS = page_headers(STATUS_PAGE)


class AdminRoutes:
    def __init__(
        self, supervisor: Supervisor, telemetry: Telemetry, *, token: str | None = None
    ) -> None:
        self.supervisor = supervisor
        self.telemetry = telemetry
        self.token = token

    def authorize(self, exchange: Exchange) -> None:
        """The admin token, or without one a local client addressing the
        service by a loopback name; 401/403 otherwise."""
        scope = exchange.scope
        if self.token is None:
            if not client_is_loopback(scope):
                raise ApiError(
                    403,
                    "the admin API answers only local clients unless admin_token is configured",
                    type="permission_error",
                    code="admin_forbidden",
                )
            require_loopback_host(
                scope, "without admin_token the admin API", code="admin_forbidden"
            )
            return
        supplied = b""
        for name, value in exchange.headers:
            if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                supplied = value[7:].strip()
        if not hmac.compare_digest(supplied, self.token.encode()):
            raise ApiError(
                401,
                "a valid admin token is required (Authorization: Bearer <admin_token>)",
                type="authentication_error",
                code="invalid_admin_token",
            )

    async def __call__(self, exchange: Exchange) -> None:
        if exchange.scope["method"] == "GET" and exchange.path.rstrip("/") == "/admin":
            await self._page(exchange)
            return
        self.authorize(exchange)
        method, parts = exchange.scope["method"], exchange.path.strip("/").split("/")[1:]
        status, body = self._route(method, parts)()
        await exchange.answer_json(status, body)

    async def _page(self, exchange: Exchange) -> None:
        """The status page: no data in it, so no token needed to load it."""
        await exchange.answer_bytes(200, STATUS_PAGE, PAGE_CONTENT_TYPE, STATUS_PAGE_HEADERS)

    def _route(self, method: str, parts: list[str]) -> Callable[[], tuple[int, dict[str, Any]]]:
        if parts in (["pool"], ["status"]):
            if method != "GET":
                raise ApiError(405, f"method {method} is not allowed on /admin/{parts[0]}")
            if parts == ["status"]:
                return lambda: (200, self._status())
            return lambda: (200, self.supervisor.status())
        if method != "POST":
            if parts[:1] in (["pool"], ["children"]):
                raise ApiError(405, f"method {method} is not allowed here; use POST")
            raise ApiError(404, "no such admin endpoint", code="unknown_url")
        if len(parts) == 2 and parts[0] == "pool":
            action = {
                "rolling-restart": self._rolling_restart,
                "drain": self._drain_pool,
                "undrain": self._undrain_pool,
            }.get(parts[1])
            if action is not None:
                return action
        if len(parts) == 3 and parts[0] == "children":
            name, verb = parts[1], parts[2]
            act = {
                "restart": (self.supervisor.restart_child, 202),
                "drain": (self.supervisor.drain_child, 200),
                "undrain": (self.supervisor.undrain_child, 200),
            }.get(verb)
            if act is not None:
                return lambda: self._child_action(name, *act)
        raise ApiError(404, "no such admin endpoint", code="unknown_url")

    def _status(self) -> dict[str, Any]:
        """All the status page shows: the pool, readiness, the requests
        being served, recent errors."""
        supervisor, telemetry = self.supervisor, self.telemetry
        readiness = supervisor.readiness()
        status = supervisor.status()
        status.update(
            readiness={"ready": readiness.ready, "reason": readiness.reason},
            requests=telemetry.active(),
            recent_errors=list(telemetry.recent_errors),
            rate_limits=[
                {
                    "window": w.name,
                    "used_percent": w.used_percent,
                    "window_minutes": w.window_minutes,
                }
                for w in supervisor.rate_limits()
            ],
            uptime_s=round(time.time() - telemetry.started_wall, 1),
            version=VERSION,
        )
        return status

    def _rolling_restart(self) -> tuple[int, dict[str, Any]]:
        started = self.supervisor.start_rolling_restart()
        body = self.supervisor.status()
        body["started"] = started
        if not started:
            body["message"] = "a rolling restart is already running"
        return (202 if started else 409), body

    def _drain_pool(self) -> tuple[int, dict[str, Any]]:
        self.supervisor.pause()
        return 200, self.supervisor.status()

    def _undrain_pool(self) -> tuple[int, dict[str, Any]]:
        self.supervisor.resume()
        return 200, self.supervisor.status()

    def _child_action(
        self, name: str, action: Callable[[str], ChildRef], status: int
    ) -> tuple[int, dict[str, Any]]:
        try:
            child = action(name)
        except UnknownChild as exc:
            raise ApiError(404, str(exc), code="unknown_child") from exc
        body = self.supervisor.status()
        body["child"] = child.name
        body["slot"] = child.slot
        return status, body


_POOL: JsonSchema = {
    "type": "object",
    "description": "The pool: its children (slot, name, pid, state, load, restarts, breaker, "
    "...) and counters.",
    "properties": {
        "size": {"type": "integer"},
        "ready": {"type": "integer"},
        "auth_problem": {"type": ["string", "null"]},
        "paused": {"type": "boolean"},
        "rolling_restart": {"type": "boolean"},
        "accepting": {"type": "boolean"},
        "active_turns": {"type": "integer"},
        "queued": {"type": "integer"},
        "max_turns_per_child": {"type": "integer"},
        "children": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["size", "ready", "paused", "children"],
}
_STATUS: JsonSchema = {
    "type": "object",
    "description": "The pool (as GET /admin/pool) and what the status page shows besides: "
    "readiness, the requests being served, recent errors, rate limits, uptime, version.",
    "properties": {
        **_POOL["properties"],
        "readiness": {"type": "object"},
        "requests": {"type": "array", "items": {"type": "object"}},
        "recent_errors": {"type": "array", "items": {"type": "object"}},
        "rate_limits": {"type": "array", "items": {"type": "object"}},
        "uptime_s": {"type": "number"},
        "version": {"type": "string"},
    },
    "required": ["size", "children", "readiness", "requests", "version"],
}
_CHILD_ACTION: JsonSchema = {
    "type": "object",
    "description": "The pool (as GET /admin/pool), with the child acted on.",
    "properties": {**_POOL["properties"], "child": {"type": "string"}, "slot": {"type": "integer"}},
    "required": ["size", "children", "child", "slot"],
}
_TOKEN = (
    "Needs the admin token (Authorization: Bearer <admin_token>); without one configured, "
    "a local client addressing the service by a loopback name. "
)
_CHILD = {"name": "The child's name, as GET /admin/pool lists it."}


def _pool_action(verb: str, summary: str, status: str) -> Operation:
    return Operation(
        "POST",
        f"/admin/pool/{verb}",
        summary,
        "admin",
        description=_TOKEN + status,
        responses={"application/json": _POOL},
    )


def _child_action(verb: str, summary: str, status: str) -> Operation:
    return Operation(
        "POST",
        f"/admin/children/{{name}}/{verb}",
        summary,
        "admin",
        description=_TOKEN + status + " 404 `unknown_child` for a name not in the pool.",
        responses={"application/json": _CHILD_ACTION},
        parameters=_CHILD,
    )


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/admin/",
        "The operator's status page",
        "admin",
        description="An HTML page holding no data; it reads and acts through the endpoints "
        "below, under their rule.",
        responses={"text/html": {"type": "string"}},
        open=True,
    ),
    Operation(
        "GET",
        "/admin/pool",
        "Pool status",
        "admin",
        description=_TOKEN,
        responses={"application/json": _POOL},
    ),
    Operation(
        "GET",
        "/admin/status",
        "Everything the status page shows",
        "admin",
        description=_TOKEN,
        responses={"application/json": _STATUS},
    ),
    _pool_action(
        "rolling-restart",
        "Replace every child, one by one",
        "202 when started; 409 when one is already running.",
    ),
    _pool_action("drain", "Stop giving out turns", "Running turns go on."),
    _pool_action("undrain", "Resume giving out turns", ""),
    _child_action("restart", "Replace one child", "202: it is drained, then replaced."),
    _child_action("drain", "No new turns for one child", ""),
    _child_action("undrain", "Put one child back in service", ""),
)
