"""``GET /healthz`` (liveness) and ``GET /readyz`` (ready to take a turn now)."""

from __future__ import annotations

from typing import Any

from supervisor import Supervisor

from .response import Exchange


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
