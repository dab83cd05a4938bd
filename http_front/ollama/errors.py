"""Ollama's error shape, ``{"error": "message"}``: every error of an ``/api/`` route.

The spine raises :class:`~http_front.errors.ApiError` (OpenAI's shape) with
the status, headers and message the error table chose; :func:`as_ollama`
keeps all of it and changes only the body. The door and the access layer
(:mod:`http_front.app`, for ``/api/`` paths) both answer through it.
"""

from __future__ import annotations

from typing import Any

from ..errors import ApiError

#: Paths whose errors take Ollama's shape.
PREFIX = "/api/"


class OllamaError(ApiError):
    def body(self) -> dict[str, Any]:
        return {"error": self.message}


def as_ollama(error: ApiError) -> ApiError:
    """``error`` with Ollama's body; status, headers, retry-after unchanged."""
    if isinstance(error, OllamaError):
        return error
    shaped = OllamaError(
        error.status,
        error.message,
        type=error.type,
        param=error.param,
        code=error.code,
        retry_after_s=error.retry_after_s,
        close_connection=error.close_connection,
        headers=error.headers,
    )
    shaped.__cause__ = error
    return shaped


def is_ollama_path(path: str) -> bool:
    return path.startswith(PREFIX) or path == PREFIX.rstrip("/")
