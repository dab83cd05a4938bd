"""Hypercorn's writes straight to the socket (http_front.hypercorn_send): what
a client receives is exactly what the application sent, in order, whether the
socket takes a write at once, in part, or not at all; a client that leaves is
noticed as before."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio.run import worker_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import wrap_app

from http_front.asgi import serve_lifespan
from http_front.hypercorn_errors import HypercornChanged
from http_front.hypercorn_send import install
from http_front.response import Exchange, open_event_stream

TIMEOUT_S = 30
#: Chunk sizes from a few bytes to far more than a socket buffer holds.
SIZES = [1, 7, 4096, 65_536, 3, 1_500_000, 10, 4_000_000, 200_000, 2]


def chunk(index: int, size: int) -> bytes:
    return (b"%d:" % index + hashlib.sha256(b"%d" % index).hexdigest().encode() * size)[:size]


class StreamingApp:
    """Streams :data:`SIZES` chunks on ``/stream``; records how each ended."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            for index, size in enumerate(SIZES):
                await send(
                    {"type": "http.response.body", "body": chunk(index, size), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except BaseException as exc:
            self.outcomes.append(type(exc).__name__)
            raise
        self.outcomes.append("sent")


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    install()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(
                worker_serve,
                wrap_app(app, config.wsgi_max_body_size, "asgi"),
                config,
                shutdown_trigger=stop.wait,
            )
        )
        try:
            yield binds[0]
        finally:
            stop.set()


async def test_slow_and_fast_readers_get_every_byte_in_order() -> None:
    app = StreamingApp()
    expected = b"".join(chunk(i, size) for i, size in enumerate(SIZES))
    with trio.fail_after(TIMEOUT_S):
        async with serving(app) as url, httpx.AsyncClient() as client:
            fast = await client.get(f"{url}/stream")
            assert fast.content == expected
            # A reader that dawdles: the socket fills, writes go part way,
            # then Hypercorn's own path waits for room.
            received = bytearray()
            async with client.stream("GET", f"{url}/stream") as slow:
                async for data in slow.aiter_raw(16_384):
                    received += data
                    if len(received) < 3_000_000:
                        await trio.sleep(0.001)
            assert bytes(received) == expected
    assert app.outcomes == ["sent", "sent"]


class EndlessApp:
    """Streams 1 MB chunks until Hypercorn reports the client gone."""

    def __init__(self) -> None:
        self.gone = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.gone.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while not self.gone.is_set():
                await send(
                    {"type": "http.response.body", "body": b"z" * 1_000_000, "more_body": True}
                )
                await trio.lowlevel.checkpoint()


async def ask_and_leave(url: str) -> None:
    """Ask for /stream, read the start of the answer, and go away."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await stream.receive_some(65_536)).startswith(b"HTTP/1.1 200")
    await stream.aclose()


async def test_a_client_that_leaves_mid_stream_is_noticed() -> None:
    app = EndlessApp()
    with trio.fail_after(TIMEOUT_S):
        async with serving(app) as url:
            await ask_and_leave(url)  # while the application goes on writing
            await app.gone.wait()


async def test_the_next_client_is_served_after_one_left() -> None:
    app = StreamingApp()
    with trio.fail_after(TIMEOUT_S):
        async with serving(app) as url:
            await ask_and_leave(url)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{url}/stream")
            assert len(response.content) == sum(SIZES)


def test_install_refuses_a_hypercorn_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    async def protocol_send(self: TCPServer, event: Any) -> None:
        return None

    monkeypatch.setattr(TCPServer, "protocol_send", protocol_send)
    with pytest.raises(HypercornChanged, match="directly"):
        install()


def test_install_is_idempotent() -> None:
    install()
    wrapped = TCPServer.protocol_send
    install()
    assert TCPServer.protocol_send is wrapped
    assert wrapped.replaces is not None  # type: ignore[attr-defined]


class AnsweringApp:
    """``/json``: a whole answer; ``/sse``: a stream's head and first frames,
    then more frames — through the service's own Exchange and EventStream."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        exchange = Exchange(scope, receive, send)
        if scope["path"] == "/json":
            await exchange.answer_json(200, {"answer": 42})
            return
        async with open_event_stream(exchange, keepalive_s=60) as out:
            await out.start(b"data: first\n\n")
            await out.send(b"data: second\n\n")
            await out.finish(b"data: [DONE]\n\n")


async def test_a_head_goes_out_with_the_first_bytes_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        written = real_write(fd, data)
        writes.append(bytes(data[:written]))
        return written

    monkeypatch.setattr(os, "write", counting_write)
    with trio.fail_after(TIMEOUT_S):
        async with serving(AnsweringApp()) as url, httpx.AsyncClient() as client:
            for _ in range(2):  # the same connection, kept alive
                writes.clear()
                answer = await client.get(f"{url}/json")
                assert answer.json() == {"answer": 42}
                assert len(writes) == 1
                assert writes[0].startswith(b"HTTP/1.1 200")
                assert writes[0].endswith(b'{"answer":42}')
                writes.clear()
                stream = await client.get(f"{url}/sse")
                assert stream.text == "data: first\n\ndata: second\n\ndata: [DONE]\n\n"
                # The head and the first frames together; each later write alone.
                assert writes[0].startswith(b"HTTP/1.1 200")
                assert writes[0].endswith(b"data: first\n\n\r\n")
                assert [w.split(b"\r\n")[1] for w in writes[1:]][:2] == [
                    b"data: second\n\n",
                    b"data: [DONE]\n\n",
                ]
