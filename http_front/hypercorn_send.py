"""Hypercorn's writes to a connection, without a trip through the scheduler
when the socket takes the bytes at once.

Every chunk of a streamed response reaches the socket through
``hypercorn.trio.tcp_server.TCPServer.protocol_send``, which takes the
connection's send lock, opens a shielded cancel scope and calls
``SocketStream.send_all``. Each of those yields to Trio's scheduler: two
trips for every delta a client sees. With dozens of streams that is most of
the bridge's time per delta and what a delta waits behind (``make bench``).

:func:`install` wraps the method: when nobody holds the send lock (no other
write is under way, so none can be overtaken) and the connection is a plain
TCP stream, the bytes go to the non-blocking socket directly. Whatever the
socket does not take at once, and any error, goes down Hypercorn's own path
(lock, ``send_all``, its handling of a closed peer), so back-pressure,
ordering and disconnects behave exactly as before. A task that writes
this way does not yield; the stream's task still does, whenever it waits
for the next event.

Hypercorn also writes a response's head on its own, then each body chunk:
two socket calls for a small answer or a stream's first bytes, where one
would do. Within :func:`writes_together` a task's writes to its connection
are held and go out as one when the block ends. A stream's later frames
can then go out as chunks framed here (:func:`write_chunk`), without the
ASGI path per frame.

Like :mod:`http_front.hypercorn_errors`, this leans on Hypercorn's
internals and checks them first (:class:`HypercornChanged`).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from hypercorn.events import Event, RawData
from hypercorn.trio.tcp_server import TCPServer

from bridge.peer import write_nowait

from .hypercorn_errors import HypercornChanged

_METHOD = "protocol_send"
_Send = Callable[[TCPServer, Event], Awaitable[None]]
#: Hypercorn's own ``protocol_send``, once :func:`install` has wrapped it.
_hypercorns: _Send | None = None


def _written_at_once(server: TCPServer, data: bytes) -> int:
    """How much of ``data`` the socket took without blocking (0 when it
    would block or cannot be written here: Hypercorn's path then decides)."""
    stream = server.stream
    if not isinstance(stream, trio.SocketStream) or server.send_lock.locked():
        return 0
    return write_nowait(stream.socket.fileno(), data)


class _Held:
    """What a :func:`writes_together` block wrote, not sent yet."""

    __slots__ = ("chunked", "data", "server")

    def __init__(self) -> None:
        self.server: TCPServer | None = None
        self.data: list[bytes] = []
        #: The connection, if the block began an HTTP/1.1 response with a
        #: chunked body (see :func:`write_chunk`).
        self.chunked: TCPServer | None = None


_held: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("held_writes", default=None)


@contextlib.asynccontextmanager
async def writes_together() -> AsyncIterator[_Held]:
    """What the block writes to its connection goes out as one write when it
    ends: a response's head with its first bytes (or all of a small answer),
    instead of a socket call for each. The block must send and nothing else
    (it must not wait for the client, say): its writes are held until then.
    Afterwards, the holder's ``chunked`` is the connection if the block
    began a response whose body is sent in HTTP/1.1 chunks.
    """
    held = _Held()
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)
        await _release(held)


_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"


async def _release(held: _Held) -> None:
    server, held.server = held.server, None
    data = b"".join(held.data)
    held.data.clear()
    if server is None or not data:
        return
    if data.startswith(b"HTTP/1.1 "):
        head = data[: data.find(b"\r\n\r\n") + 2]
        if _CHUNKED in head.lower():
            held.chunked = server
    await _send(server, data)


async def write_chunk(server: TCPServer, data: bytes) -> None:
    """More of a chunked response body (``writes_together``'s ``chunked``),
    framed here and written like any other write of the connection: a
    stream's frames skip the ASGI send, Hypercorn's HTTP stream and h11,
    which for a chunked body only frame the bytes (h11 keeps no count of
    them). The response's end still goes the ASGI way."""
    if data:
        await _send(server, b"%x\r\n%b\r\n" % (len(data), data))


async def _send(server: TCPServer, data: bytes) -> None:
    """``data`` to the socket at once if it takes it, else Hypercorn's way."""
    written = _written_at_once(server, data)
    if written < len(data):
        assert _hypercorns is not None, "install() first"
        await _hypercorns(server, RawData(data=data[written:]))


def _direct_first(original: _Send) -> Any:
    async def protocol_send(self: TCPServer, event: Event) -> None:
        """Hypercorn's send, writing straight to the socket when it can."""
        held = _held.get()
        if held is not None and held.server in (None, self):
            if type(event) is RawData:
                held.server = self
                held.data.append(event.data)
                return
            await _release(held)  # whatever comes next follows what was written
        if type(event) is RawData:
            if event.data:  # (h11 frames the end of a sized body as no bytes)
                await _send(self, event.data)
            return
        await original(self, event)

    protocol_send.replaces = original  # type: ignore[attr-defined]
    return protocol_send


def _check(current: Any) -> None:
    problems: list[str] = []
    if not inspect.iscoroutinefunction(current) or list(inspect.signature(current).parameters) != [
        "self",
        "event",
    ]:
        problems.append(f"TCPServer.{_METHOD} is not a coroutine method of (self, event)")
    try:
        source = inspect.getsource(current)
    except (OSError, TypeError):
        source = ""
    for needle in ("self.send_lock", "self.stream.send_all(event.data)", "RawData"):
        if needle not in source:
            problems.append(f"TCPServer.{_METHOD} no longer uses {needle}")
    HypercornChanged.check(
        "write to connections directly", problems, "http_front/hypercorn_send.py"
    )


def install() -> None:
    """Make Hypercorn write to a plain TCP connection without yielding when
    the socket takes the bytes at once. Process-wide and idempotent; raises
    :class:`HypercornChanged` if Hypercorn's internals are not as expected."""
    current = getattr(TCPServer, _METHOD, None)
    if current is None:
        raise HypercornChanged(f"TCPServer has no {_METHOD} to wrap")
    if not hasattr(current, "replaces"):
        _check(current)
        global _hypercorns
        _hypercorns = current
        setattr(TCPServer, _METHOD, _direct_first(current))
