"""``GET /v1/models`` and ``/v1/models/{id}``, and the model check of every door."""

from __future__ import annotations

from typing import Any

import trio

from bridge.protocol import ModelInfo
from supervisor import Supervisor, TurnRefused

from . import telemetry
from .errors import ApiError, refusal_error
from .response import Exchange


async def catalog(supervisor: Supervisor) -> list[ModelInfo]:
    """codex's models; the time it takes codex to list them is codex's."""
    record = telemetry.current()
    began = trio.current_time()
    try:
        return await supervisor.models()
    except TurnRefused as exc:
        if record is not None:
            record.refusal = exc.kind.name.lower()
        raise refusal_error(exc) from exc
    finally:
        if record is not None:
            record.codex_s += trio.current_time() - began


async def check_model(supervisor: Supervisor, model: str) -> None:
    """404 ``model_not_found`` unless codex knows ``model`` (by id or name)."""
    if not any(model in (m.id, m.model) for m in await catalog(supervisor)):
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "codex"}


class ModelRoutes:
    PREFIX = "/v1/models/"

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def list(self, exchange: Exchange) -> None:
        ids = [m.id for m in await catalog(self.supervisor) if not m.hidden]
        await exchange.answer_json(200, {"object": "list", "data": [_model_object(i) for i in ids]})

    async def get(self, exchange: Exchange) -> None:
        model_id = exchange.path[len(self.PREFIX) :].rstrip("/")
        await check_model(self.supervisor, model_id)
        await exchange.answer_json(200, _model_object(model_id))
