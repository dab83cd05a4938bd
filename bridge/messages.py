"""JSON-RPC wire messages of the codex app-server (sans-IO).

codex speaks JSON-RPC 2.0 *without* the ``"jsonrpc"`` member, one object per
line. Every line the child writes is one of four kinds:

* :class:`Response`      ``{"id", "result"}``           answer to our request
* :class:`ErrorResponse` ``{"id", "error"}``            failed answer to our request
* :class:`Notification`  ``{"method", "params"}``       event (``emittedAtMs`` extra)
* :class:`ServerRequest` ``{"id", "method", "params"}`` the child asks us (approvals)

:func:`decode_message` classifies one line; the ``encode_*`` functions build
the lines we write. All structuring goes through the one converter made by
:func:`make_converter`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs
import cattrs
import orjson

JsonObject: TypeAlias = dict[str, Any]
RequestId: TypeAlias = int | str


@attrs.frozen
class RpcError:
    code: int
    message: str
    data: Any = None


@attrs.frozen
class Response:
    id: RequestId
    result: Any


@attrs.frozen
class ErrorResponse:
    id: RequestId | None
    error: RpcError


@attrs.frozen
class Notification:
    method: str
    params: JsonObject
    emitted_at_ms: int | None = None


@attrs.frozen
class ServerRequest:
    id: RequestId
    method: str
    params: JsonObject


Message: TypeAlias = Response | ErrorResponse | Notification | ServerRequest


class ProtocolError(Exception):
    """A line from the child that is not a JSON-RPC message we understand."""


def make_converter() -> cattrs.Converter:
    """The project's one cattrs converter for codex wire types.

    Unknown keys are ignored (codex adds fields between releases); a missing
    required key or a wrong type raises, and :func:`structure` turns that into
    :class:`ProtocolError`.
    """
    converter = cattrs.Converter(forbid_extra_keys=False)
    return converter


CONVERTER = make_converter()


def structure(data: Any, cls: type[Any]) -> Any:
    """Structure ``data`` into ``cls`` with the shared converter.

    Raises :class:`ProtocolError` with a readable reason on a shape mismatch.
    """
    try:
        return CONVERTER.structure(data, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        reasons = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise ProtocolError(f"unexpected shape for {cls.__name__}: {reasons}") from exc


def decode_message(line: bytes) -> Message:
    """Classify one line written by the child.

    Raises :class:`ProtocolError` for non-JSON, non-objects and objects that
    fit none of the four kinds. This is the hot path (one call per streamed
    delta), so it inspects the dict by hand instead of going through cattrs.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a JSON object: {type(obj).__name__}")
    method = obj.get("method")
    if method is not None:
        if not isinstance(method, str):
            raise ProtocolError("'method' is not a string")
        params = obj.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise ProtocolError(f"{method}: 'params' is not an object")
        if "id" in obj:
            request_id = obj["id"]
            if not isinstance(request_id, int | str) or isinstance(request_id, bool):
                raise ProtocolError(f"{method}: bad request id {request_id!r}")
            return ServerRequest(request_id, method, params)
        emitted = obj.get("emittedAtMs")
        return Notification(method, params, emitted if isinstance(emitted, int) else None)
    if "id" not in obj:
        raise ProtocolError("neither 'method' nor 'id'")
    response_id = obj["id"]
    if "error" in obj:
        error = obj["error"]
        if not isinstance(error, dict):
            raise ProtocolError("'error' is not an object")
        code = error.get("code")
        message = error.get("message")
        return ErrorResponse(
            response_id,
            RpcError(
                code if isinstance(code, int) else 0,
                message if isinstance(message, str) else repr(error),
                error.get("data"),
            ),
        )
    if "result" in obj:
        return Response(response_id, obj["result"])
    raise ProtocolError(f"id {response_id!r} with neither 'result' nor 'error'")


def _line(obj: JsonObject) -> bytes:
    return orjson.dumps(obj) + b"\n"


def encode_request(request_id: RequestId, method: str, params: JsonObject | None) -> bytes:
    obj: JsonObject = {"id": request_id, "method": method}
    if params is not None:
        obj["params"] = params
    return _line(obj)


def encode_notification(method: str, params: JsonObject | None = None) -> bytes:
    obj: JsonObject = {"method": method}
    if params is not None:
        obj["params"] = params
    return _line(obj)


def encode_response(request_id: RequestId, result: Any) -> bytes:
    return _line({"id": request_id, "result": result})


def encode_error_response(request_id: RequestId, code: int, message: str) -> bytes:
    return _line({"id": request_id, "error": {"code": code, "message": message}})
