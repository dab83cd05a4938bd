"""``GET /v1/models`` and ``/v1/models/{id}``, and the model check of every door."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio

from bridge.protocol import ModelInfo
from supervisor import Supervisor, TurnRefused, TurnRequest

from . import telemetry
from .errors import ApiError, refusal_error
from .response import Exchange
from .schema import JsonSchema, Operation


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


@attrs.frozen
class Alias:
    """A model name of the operator's (``[aliases.NAME]``): a codex model with
    settings of its own. Every door lists and accepts it like codex's models."""

    name: str
    #: The codex model (None: the service's default model).
    model: str | None = None
    effort: str | None = None
    summary: str | None = None
    #: Developer instructions added to the client's own, on a new thread.
    instructions: str | None = None
    #: Commands may read but not write the conversation's directory.
    read_only: bool = False
    #: codex's approval policy (``untrusted``, ``on-request``, ``never``).
    approval_policy: str | None = None

    def apply(self, turn: TurnRequest) -> TurnRequest:
        instructions = turn.developer_instructions
        if self.instructions:
            instructions = "\n\n".join(filter(None, (self.instructions, instructions)))
        return attrs.evolve(
            turn,
            model=self.model,
            effort=self.effort or turn.effort,
            summary=self.summary or turn.summary,
            developer_instructions=instructions,
            read_only=self.read_only or turn.read_only,
            approval_policy=self.approval_policy or turn.approval_policy,
        )


async def model_turn(
    supervisor: Supervisor, aliases: Mapping[str, Alias], model: str | None, turn: TurnRequest
) -> TurnRequest:
    """The turn for a request naming ``model``: an alias's settings applied,
    or codex's model checked (404 ``model_not_found`` if unknown)."""
    if model is None:
        return turn
    alias = aliases.get(model)
    if alias is not None:
        return alias.apply(turn)
    await check_model(supervisor, model)
    return turn


def _model_object(model_id: str, owned_by: str = "codex") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by}


class ModelRoutes:
    PREFIX = "/v1/models/"

    def __init__(self, supervisor: Supervisor, aliases: Mapping[str, Alias] | None = None) -> None:
        self.supervisor = supervisor
        self.aliases = dict(aliases or {})

    async def list(self, exchange: Exchange) -> None:
        """codex's models (those it does not hide), then the operator's aliases;
        an alias named like a codex model stands in its place."""
        ids = [m.id for m in await catalog(self.supervisor) if not m.hidden]
        data = [_model_object(i) for i in ids if i not in self.aliases]
        data += [_model_object(name, "codex-bridge") for name in self.aliases]
        await exchange.answer_json(200, {"object": "list", "data": data})

    async def get(self, exchange: Exchange) -> None:
        model_id = exchange.path[len(self.PREFIX) :].rstrip("/")
        if model_id in self.aliases:
            await exchange.answer_json(200, _model_object(model_id, "codex-bridge"))
            return
        await check_model(self.supervisor, model_id)
        await exchange.answer_json(200, _model_object(model_id))


MODEL_SCHEMA: JsonSchema = {
    "type": "object",
    "description": "A model: one of codex's, or an alias of the operator's "
    '(owned_by "codex-bridge").',
    "properties": {
        "id": {"type": "string", "description": "The name to put in a request's `model`."},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string", "enum": ["codex", "codex-bridge"]},
    },
    "required": ["id", "object", "created", "owned_by"],
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/v1/models",
        "List models",
        "models",
        description="codex's models (those it does not hide) and the operator's aliases "
        "(`[aliases.NAME]` in the config file). An alias named like a codex model "
        "replaces it.",
        responses={
            "application/json": {
                "type": "object",
                "properties": {
                    "object": {"const": "list"},
                    "data": {"type": "array", "items": MODEL_SCHEMA},
                },
                "required": ["object", "data"],
            }
        },
    ),
    Operation(
        "GET",
        "/v1/models/{model}",
        "Retrieve a model",
        "models",
        description="One model or alias by name; 404 `model_not_found` for an unknown one.",
        responses={"application/json": MODEL_SCHEMA},
        parameters={"model": "A model id of codex's, or an alias's name."},
    ),
)
