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
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import Pool, UnknownChild

from .access import client_is_loopback, require_loopback_host
from .asgi import Receive, Scope, Send, send_json
from .errors import ApiError


def pool_status(mux: TurnMultiplexer) -> dict[str, Any]:
    status = mux.pool.status()
    status.update(
        accepting=mux.accepting,
        active_turns=mux.active_turns,
        queued=mux.queued,
        max_turns_per_child=mux.max_turns_per_child,
    )
    return status


class AdminApp:
    def __init__(self, multiplexer: TurnMultiplexer, *, token: str | None = None) -> None:
        self.mux = multiplexer
        self.token = token

    @property
    def pool(self) -> Pool:
        return self.mux.pool

    def _authorize(self, scope: Scope) -> None:
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
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                supplied = value[7:].strip()
        if not hmac.compare_digest(supplied, self.token.encode()):
            raise ApiError(
                401,
                "a valid admin token is required (Authorization: Bearer <admin_token>)",
                type="authentication_error",
                code="invalid_admin_token",
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._authorize(scope)
        method, parts = scope["method"], scope["path"].strip("/").split("/")[1:]
        handler = self._route(method, parts)
        await handler(send)

    def _route(self, method: str, parts: list[str]) -> Callable[[Send], Awaitable[None]]:
        if parts == ["pool"]:
            if method != "GET":
                raise ApiError(405, f"method {method} is not allowed on /admin/pool")
            return self._status
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
            if verb in ("restart", "drain", "undrain"):
                return lambda send: self._child_action(send, name, verb)
        raise ApiError(404, "no such admin endpoint", code="unknown_url")

    async def _status(self, send: Send) -> None:
        await send_json(send, 200, pool_status(self.mux))

    async def _rolling_restart(self, send: Send) -> None:
        started = self.pool.start_rolling_restart()
        body = pool_status(self.mux)
        body["started"] = started
        if not started:
            body["message"] = "a rolling restart is already running"
        await send_json(send, 202 if started else 409, body)

    async def _drain_pool(self, send: Send) -> None:
        self.pool.paused = True
        self.pool.notify_load_changed()
        await send_json(send, 200, pool_status(self.mux))

    async def _undrain_pool(self, send: Send) -> None:
        self.pool.paused = False
        self.pool.notify_load_changed()
        await send_json(send, 200, pool_status(self.mux))

    async def _child_action(self, send: Send, name: str, verb: str) -> None:
        try:
            child = self.pool.find(name)
        except UnknownChild as exc:
            raise ApiError(404, str(exc), code="unknown_child") from exc
        if verb == "restart":
            self.pool.restart(child, "restarted by an operator")
            status = 202
        elif verb == "drain":
            self.pool.drain(child)
            status = 200
        else:
            self.pool.undrain(child)
            status = 200
        body = pool_status(self.mux)
        body["child"] = child.name
        body["slot"] = self.pool.slot_of(child).index
        await send_json(send, status, body)
