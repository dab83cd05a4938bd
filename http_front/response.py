"""One HTTP exchange, and the owner of a streamed response.

Handlers get an :class:`Exchange` — the request's headers and body, whole
answers, the client's disconnect — and stream through an
:class:`EventStream` (:func:`open_event_stream`), which owns the response's
start, keepalive frames during silence, the terminal frame, and which never
writes after it. No handler writes raw ASGI messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import attrs
import trio
from hypercorn.trio.tcp_server import TCPServer

from . import telemetry
from .asgi import Receive, Scope, Send, send_json
from .errors import ApiError
from .hypercorn_send import write_chunk, writes_together

#: An SSE comment: keeps proxies and clients from timing out a silent stream.
SSE_KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
)


class ClientGone(Exception):
    """The client went away before its request was read."""


@attrs.frozen
class BodyLimits:
    """How big a request body may be, and how long it may take to arrive."""

    max_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 60.0


def header_of(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


def has_body(scope: Scope) -> bool:
    length = header_of(scope, b"content-length")
    return header_of(scope, b"transfer-encoding") is not None or (
        length is not None and length.strip() not in (b"", b"0")
    )


class Exchange:
    """One request and its answer."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.scope.get("headers", []))

    def header(self, name: bytes) -> bytes | None:
        return header_of(self.scope, name)

    # -- the request ---------------------------------------------------------------

    def require_json(self) -> None:
        """Refuse a body that does not say it is JSON, before reading it.

        ``application/json`` (with parameters such as ``charset``) or any
        ``+json`` media type. ``text/plain`` and forms above all: a browser
        sends those cross-origin without a preflight.
        """
        raw = self.header(b"content-type")
        media = (raw or b"").split(b";", 1)[0].strip().lower()
        kind, _, subtype = media.partition(b"/")
        json_suffix = subtype.endswith(b"+json") and len(subtype) > len(b"+json")
        if media == b"application/json" or (kind and json_suffix):
            return
        given = (
            "no Content-Type" if raw is None else f"Content-Type {raw.decode('latin-1')[:100]!r}"
        )
        raise ApiError(
            415,
            f"Unsupported content type: this endpoint takes a JSON body, but the request has "
            f"{given}. Send Content-Type: application/json.",
            code="unsupported_content_type",
            close_connection=True,  # the body stays unread
        )

    async def read_body(self, limits: BodyLimits) -> bytes:
        """The whole body, within ``max_bytes`` (413) and ``timeout_s`` (408:
        a client trickling its body must not hold a request open)."""
        began = trio.current_time()
        record = telemetry.current()
        try:
            with trio.move_on_after(limits.timeout_s):
                return await self._read_body_now(limits.max_bytes)
        finally:
            if record is not None:
                record.body_s += trio.current_time() - began
        raise ApiError(
            408,
            f"the request body did not arrive within {limits.timeout_s:g}s",
            code="request_timeout",
            close_connection=True,  # the rest of the body stays unread
        )

    async def _read_body_now(self, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(
                    413,
                    f"the request body exceeds {max_bytes} bytes",
                    code="request_too_large",
                    close_connection=True,  # the rest of the body stays unread
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @asynccontextmanager
    async def cancelled_on_disconnect(self) -> AsyncIterator[None]:
        """Everything inside is cancelled when the client goes away (a turn
        then gets interrupted on its way out)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, nursery.cancel_scope)
            yield
            nursery.cancel_scope.cancel()

    async def _watch_disconnect(self, scope: trio.CancelScope) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    # -- whole answers ---------------------------------------------------------------

    async def answer_json(
        self, status: int, body: object, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        async with writes_together():
            await send_json(self._send, status, body, headers)

    async def answer_bytes(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        async with writes_together():
            await self._send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", content_type),
                        (b"content-length", str(len(body)).encode()),
                        *headers,
                    ],
                }
            )
            await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def answer_error(self, error: ApiError) -> None:
        telemetry.note_error(error)
        headers: list[tuple[bytes, bytes]] = list(error.headers)
        if error.retry_after_s is not None:
            headers.append((b"retry-after", str(max(1, round(error.retry_after_s))).encode()))
        if error.close_connection:
            headers.append((b"connection", b"close"))
        await self.answer_json(error.status, error.encode(), headers)

    async def answer_empty(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        async with writes_together():
            await self._send(
                {"type": "http.response.start", "status": status, "headers": [*headers]}
            )
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- streams ---------------------------------------------------------------------

    async def _start(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": [*headers]})

    async def _write(self, data: bytes, *, last: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": not last})


class EventStream:
    """A streamed response: started by its first frames, kept alive during
    silence, ended by its terminal frames (see :func:`open_event_stream`)."""

    def __init__(
        self,
        exchange: Exchange,
        nursery: trio.Nursery,
        *,
        keepalive_s: float,
        keepalive: bytes,
        headers: Iterable[tuple[bytes, bytes]],
    ) -> None:
        self._exchange = exchange
        self._nursery = nursery
        self._keepalive_s = keepalive_s
        self._keepalive = keepalive
        self._headers = tuple(headers)
        self._last_write = trio.current_time()
        self._keepalive_scope = trio.CancelScope()
        self._keepalive_done = trio.Event()
        self.started = False
        #: The connection its frames are written to as HTTP/1.1 chunks
        #: directly, once started (None: each frame is an ASGI send).
        self._chunks_to: TCPServer | None = None
        self._record = telemetry.current()

    async def start(self, first: bytes) -> None:
        """Send the response's head and its first frames; keepalive begins."""
        assert not self.started
        self.started = True
        async with writes_together() as held:  # the head and the first frames in one write
            await self._exchange._start(self._headers)
            await self.send(first)
        self._chunks_to = held.chunked
        self._nursery.start_soon(self._keep_alive)

    async def send(self, frames: bytes) -> None:
        """More frames of the stream."""
        if self._chunks_to is None:
            await self._exchange._write(frames)
        else:  # the hot path: each delta of a stream
            await write_chunk(self._chunks_to, frames)
            if self._record is not None:
                self._record.bytes_sent += len(frames)
        self._last_write = trio.current_time()

    async def finish(self, frames: bytes) -> None:
        """The terminal frames; nothing is written after them."""
        self._keepalive_scope.cancel()
        if self.started:
            await self._keepalive_done.wait()
        await self._exchange._write(frames, last=True)

    async def _keep_alive(self) -> None:
        try:
            with self._keepalive_scope:
                while True:
                    due = self._last_write + self._keepalive_s
                    await trio.sleep_until(due)
                    if self._last_write + self._keepalive_s <= trio.current_time():
                        await self.send(self._keepalive)
        finally:
            self._keepalive_done.set()


@asynccontextmanager
async def open_event_stream(
    exchange: Exchange,
    *,
    keepalive_s: float,
    keepalive: bytes = SSE_KEEPALIVE,
    headers: Iterable[tuple[bytes, bytes]] = SSE_HEADERS,
) -> AsyncIterator[EventStream]:
    """The owner of one streamed response, for the duration of the block."""
    async with trio.open_nursery() as nursery:
        stream = EventStream(
            exchange, nursery, keepalive_s=keepalive_s, keepalive=keepalive, headers=headers
        )
        try:
            yield stream
        finally:
            stream._keepalive_scope.cancel()
