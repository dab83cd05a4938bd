"""``/openapi.json``: the OpenAPI 3.1 document of every route the app serves.

Built from the routes' own :class:`~http_front.schema.Operation` values: a
request body is published as the very :class:`~http_front.schema.BodySchema`
its door checks requests with, so the document cannot drift from what is
accepted. Errors have OpenAI's shape (``{"error": {message, type, param,
code}}``), except on Ollama's routes (``/api/...``: ``{"error": "..."}``).
Which routes need an API key, the admin token or nothing is the app's to say
(``security``); the document is built once, when the app is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .schema import JsonSchema, Operation

OPENAPI_VERSION = "3.1.0"

#: The security schemes a route may need (``security`` names one of them).
API_KEY = "apiKey"
ADMIN_TOKEN = "adminToken"
SECURITY_SCHEMES: dict[str, JsonSchema] = {
    API_KEY: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of the service's (`api_keys`), as `Authorization: Bearer "
        "<key>`. A service configured without API keys needs none.",
    },
    ADMIN_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token (`admin_token`), as `Authorization: Bearer <token>`. "
        "Without one configured, the operator's routes answer local clients only. An API "
        "key never opens them.",
    },
}

OPENAI_ERROR: JsonSchema = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}
OLLAMA_ERROR: JsonSchema = {
    "type": "object",
    "description": "Ollama's error shape.",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_ERRORS = {"Error": OPENAI_ERROR, "OllamaError": OLLAMA_ERROR}

_TAGS = {
    "chat": "OpenAI's chat completions.",
    "responses": "OpenAI's Responses API.",
    "models": "The models a request may name: codex's and the operator's aliases.",
    "ollama": "Ollama's API, for clients that speak it.",
    "health": "Liveness and readiness, for load balancers and orchestrators.",
    "admin": "The operator's: pool status and actions, the status page, metrics.",
    "docs": "This document and the interactive page over it.",
}


def _error_schema(path: str) -> str:
    """The error component a route's failures have."""
    return "OllamaError" if path.startswith("/api/") else "Error"


def _operation_id(operation: Operation) -> str:
    words = re.findall(r"[A-Za-z0-9]+", operation.path)
    return "_".join([operation.method.lower(), *words]) or operation.method.lower()


def _responses(operation: Operation) -> dict[str, Any]:
    content = {media: {"schema": schema} for media, schema in operation.responses.items()}
    success: dict[str, Any] = {"description": operation.summary}
    if content:
        success["content"] = content
    error = {"$ref": f"#/components/schemas/{_error_schema(operation.path)}"}
    return {
        "200": success,
        "4XX": {
            "description": "The request cannot be served as it is (the message says why).",
            "content": {"application/json": {"schema": error}},
        },
        "5XX": {
            "description": "The service or codex could not serve it now.",
            "content": {"application/json": {"schema": error}},
        },
    }


def openapi_document(
    operations: Iterable[Operation],
    *,
    version: str,
    security: Callable[[Operation], str | None],
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``; ``security(op)`` names the
    scheme a route needs (:data:`API_KEY`, :data:`ADMIN_TOKEN`) or None."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, JsonSchema] = dict(_ERRORS)
    bodies: dict[str, object] = {}
    tags: list[str] = []
    for operation in operations:
        entry: dict[str, Any] = {
            "operationId": _operation_id(operation),
            "summary": operation.summary,
            "tags": [operation.tag],
            "responses": _responses(operation),
        }
        if operation.description:
            entry["description"] = operation.description
        if operation.parameters:
            entry["parameters"] = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": text,
                    "schema": {"type": "string"},
                }
                for name, text in operation.parameters.items()
            ]
        body = operation.body
        if body is not None:
            if bodies.setdefault(body.name, body) is not body or body.name in _ERRORS:
                raise ValueError(f"two request bodies are named {body.name!r}")
            schemas[body.name] = body.schema
            entry["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body.name}"}}
                },
            }
        scheme = security(operation)
        entry["security"] = [{scheme: []}] if scheme is not None else []
        methods = paths.setdefault(operation.path, {})
        method = operation.method.lower()
        if method in methods:
            raise ValueError(f"two operations for {operation.method} {operation.path}")
        methods[method] = entry
        if operation.tag not in tags:
            tags.append(operation.tag)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "codex-bridge",
            "version": version,
            "description": "OpenAI- and Ollama-compatible HTTP APIs in front of a pool of "
            "codex app-server processes. Routes marked with a lock need the API key "
            "(or, for the operator's, the admin token): use Authorize.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": tag, "description": _TAGS[tag]} if tag in _TAGS else {"name": tag}
            for tag in tags
        ],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }


class OpenApi:
    """The document of an app's routes, built once and kept encoded."""

    def __init__(
        self,
        operations: Iterable[Operation],
        *,
        version: str,
        security: Callable[[Operation], str | None],
    ) -> None:
        self.operations = tuple(operations)
        self.document = openapi_document(self.operations, version=version, security=security)
        self.encoded = orjson.dumps(self.document)
