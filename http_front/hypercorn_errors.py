"""OpenAI-shaped bodies for the errors Hypercorn answers by itself.

Some requests never reach the application: h11 refuses a header block over
``h11_max_incomplete_size`` (431), a malformed request line, header or
chunked body (400), an unsupported ``Transfer-Encoding`` (501), and
Hypercorn answers with an empty body. Clients of an OpenAI-compatible API
read ``{"error": {...}}`` from every error, so :func:`install` replaces the
one method that writes those answers,
``hypercorn.protocol.h11.H11Protocol._send_error_response(status_code)``,
with one that writes the same status and headers plus that JSON body.

A connection that has not sent a whole request line and header block within
``keep_alive_timeout`` (a slowloris client, trickling bytes) is closed by
Hypercorn without a word; :func:`install` also makes it answer 408 with the
same JSON body first, when part of a request had arrived (an idle
keep-alive connection is closed silently, as before).

Hypercorn offers no hook for this, so the replacement leans on its
internals; :func:`install` checks them first and raises
:class:`HypercornChanged` rather than serve with a patch that no longer fits.
(HTTP/2 connections, which a client gets only by asking for h2c, are not
covered.)
"""

from __future__ import annotations

import contextlib
import http
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import orjson
import trio
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from .errors import error_body

_METHOD = "_send_error_response"
_ErrorResponder = Callable[[Any, int], Awaitable[None]]


class HypercornChanged(RuntimeError):
    """Hypercorn's internals no longer match what the override was written for."""

    @classmethod
    def check(cls, what: str, problems: list[str], module: str) -> None:
        """Raise, saying what cannot be done and why, if there are ``problems``."""
        if problems:
            raise cls(f"cannot {what}: " + "; ".join(problems) + f" (see {module})")


def error_message(status_code: int, max_header_bytes: int) -> str:
    if status_code == 408:
        return "the request's line and header fields did not arrive in time"
    if status_code == 431:
        return (
            f"the request's header fields are too large: at most {max_header_bytes} bytes, "
            "request line included"
        )
    if status_code == 400:
        return "the request is not valid HTTP/1.1 (request line, headers or chunked body)"
    if status_code == 501:
        return "the request's Transfer-Encoding is not supported: send chunked or Content-Length"
    phrase = _phrase(status_code).decode() or "the request was refused"
    return f"{phrase} (refused by the HTTP server before it reached the API)"


def _phrase(status_code: int) -> bytes:
    try:
        return http.HTTPStatus(status_code).phrase.encode()
    except ValueError:
        return b""


def error_payload(status_code: int, max_header_bytes: int) -> bytes:
    # Whatever the status (h11 answers an unknown Transfer-Encoding with 501),
    # what is refused is the client's request.
    message = error_message(status_code, max_header_bytes)
    return orjson.dumps(error_body(message, "invalid_request_error"))


async def _send_json_error_response(self: H11Protocol, status_code: int) -> None:
    """Hypercorn's own error response — status, ``connection: close``, its
    configured extra headers — with a JSON error body instead of none."""
    payload = error_payload(status_code, self.config.h11_max_incomplete_size)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
        *self.config.response_headers("h11"),
    ]
    response = h11.Response(status_code=status_code, headers=headers, reason=_phrase(status_code))
    await self._send_h11_event(response)
    # The peer's side is in ERROR here, so h11 refuses nothing but a body it
    # cannot frame (a HEAD request's); _send_h11_event then drops it quietly.
    await self._send_h11_event(h11.Data(data=payload))
    await self._send_h11_event(h11.EndOfMessage())


def _check(current: _ErrorResponder) -> None:
    """Fail loudly if the method, its callers or its helpers have changed."""
    problems: list[str] = []
    if not inspect.iscoroutinefunction(current):
        problems.append(f"{_METHOD} is not a coroutine function")
    elif list(inspect.signature(current).parameters) != ["self", "status_code"]:
        problems.append(f"{_METHOD} no longer takes (self, status_code)")
    if not inspect.iscoroutinefunction(getattr(H11Protocol, "_send_h11_event", None)):
        problems.append("_send_h11_event is gone")
    if not isinstance(getattr(Config, "h11_max_incomplete_size", None), int) or not callable(
        getattr(Config, "response_headers", None)
    ):
        problems.append("Config lost h11_max_incomplete_size or response_headers")
    try:
        caller = inspect.getsource(H11Protocol._handle_events)
    except (AttributeError, OSError, TypeError):
        caller = ""
    if f"self.{_METHOD}(error.error_status_hint)" not in caller:
        problems.append(f"_handle_events no longer answers protocol errors through {_METHOD}")
    HypercornChanged.check(
        "give Hypercorn's own error responses a JSON body",
        problems,
        "http_front/hypercorn_errors.py",
    )


_CLOSE = "_initiate_server_close"


def _partial_request(server: TCPServer) -> bool:
    """Whether an HTTP/1.1 connection holds part of a request not yet parsed."""
    protocol = getattr(getattr(server, "protocol", None), "protocol", None)
    if not isinstance(protocol, H11Protocol):
        return False
    connection = protocol.connection
    return connection.their_state is h11.IDLE and bool(connection.trailing_data[0])


def _timeout_answer(server: TCPServer) -> bytes:
    payload = error_payload(408, server.config.h11_max_incomplete_size)
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n"
    )
    return head + payload


def _closing_with_408(original: Callable[[TCPServer], Awaitable[None]]) -> Any:
    async def _initiate_server_close(self: TCPServer) -> None:
        """Hypercorn's idle close; a request left half-sent first gets a 408."""
        if _partial_request(self):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.move_on_after(1):  # the client may not be reading either
                    await self.stream.send_all(_timeout_answer(self))
        await original(self)

    _initiate_server_close.replaces = original  # type: ignore[attr-defined]
    return _initiate_server_close


def _check_close(current: Any) -> None:
    problems = []
    if not inspect.iscoroutinefunction(current) or list(inspect.signature(current).parameters) != [
        "self"
    ]:
        problems.append(f"TCPServer.{_CLOSE} is not a coroutine method of no argument")
    try:
        idle = inspect.getsource(TCPServer._idle_timeout)
    except (AttributeError, OSError, TypeError):
        idle = ""
    if f"self.{_CLOSE}()" not in idle or "keep_alive_timeout" not in idle:
        problems.append(f"the keep-alive timeout no longer closes through {_CLOSE}")
    if not hasattr(h11.Connection, "trailing_data"):
        problems.append("h11 lost Connection.trailing_data")
    HypercornChanged.check(
        "answer a request that timed out with 408", problems, "http_front/hypercorn_errors.py"
    )


def install() -> None:
    """Make Hypercorn's HTTP/1.1 error responses carry a JSON error body,
    and a request that does not arrive in time get a 408.

    Process-wide and idempotent; raises :class:`HypercornChanged` if
    Hypercorn's internals are not what the replacement expects.
    """
    current = getattr(H11Protocol, _METHOD, None)
    if current is None:
        raise HypercornChanged(f"H11Protocol has no {_METHOD} to replace")
    if current is not _send_json_error_response:
        _check(current)
        setattr(H11Protocol, _METHOD, _send_json_error_response)
    close = getattr(TCPServer, _CLOSE, None)
    if close is None:
        raise HypercornChanged(f"TCPServer has no {_CLOSE} to wrap")
    if not hasattr(close, "replaces"):
        _check_close(close)
        setattr(TCPServer, _CLOSE, _closing_with_408(close))
