"""``GET /healthz`` (liveness) and ``GET /readyz`` (ready to take a turn now)."""

from __future__ import annotations

from typing import Any

from supervisor import Supervisor

from .response import Exchange
from .schema import JsonSchema, Operation


class HealthRoutes:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def healthz(self, exchange: Exchange) -> None:
        health = self.supervisor.health()
        ready = health.children_ready
        body: dict[str, Any] = {
            "status": "ok" if ready else "unavailable",
            "children_ready": ready,
            "children": health.children,
        }
        if health.reason is not None:
            body["reason"] = health.reason
        await exchange.answer_json(200 if ready else 503, body)

    async def readyz(self, exchange: Exchange) -> None:
        """Ready: accepting, and a usable child that can reach its model
        (codex logged in). ``/healthz`` is liveness only."""
        readiness = self.supervisor.readiness()
        body: dict[str, Any] = {
            "ready": readiness.ready,
            "children_ready": readiness.children_ready,
        }
        if readiness.reason is not None:
            body["reason"] = readiness.reason
        if readiness.not_authenticated:
            body["code"] = "codex_not_authenticated"
        await exchange.answer_json(200 if readiness.ready else 503, body)


_HEALTH: JsonSchema = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "children_ready": {"type": "integer", "description": "Children able to take a turn."},
        "children": {"type": "integer", "description": "Children the pool keeps."},
        "reason": {"type": "string", "description": "Why none is ready."},
    },
    "required": ["status", "children_ready", "children"],
}
_READY: JsonSchema = {
    "type": "object",
    "properties": {
        "ready": {"type": "boolean"},
        "children_ready": {"type": "integer"},
        "reason": {"type": "string", "description": "Why the service is not ready."},
        "code": {
            "const": "codex_not_authenticated",
            "description": "codex is not logged in (`codex-bridge login`).",
        },
    },
    "required": ["ready", "children_ready"],
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/healthz",
        "Liveness",
        "health",
        description="200 while a codex child is ready; 503, with this same body, when none is.",
        responses={"application/json": _HEALTH},
        open=True,
    ),
    Operation(
        "GET",
        "/readyz",
        "Readiness",
        "health",
        description="200 when a turn can start now: accepting, and a child that can reach "
        "its model (codex logged in); 503, with this same body, otherwise.",
        responses={"application/json": _READY},
        open=True,
    ),
)
