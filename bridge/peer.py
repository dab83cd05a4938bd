"""The Trio side of one JSON-RPC connection to a codex app-server child.

One reader task per connection, one write lock, and a pending-request table
that cannot leak: every entry is removed in ``finally`` by the caller that
made it, answers are delivered with a non-blocking ``Event.set``, and when the
reader stops (EOF, broken pipe, :meth:`JsonRpcPeer.close`) every caller still
waiting gets :class:`PeerClosed` with the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

from .framing import DEFAULT_MAX_LINE_BYTES, LineFramer, OversizedLine
from .log_limit import LogLimiter
from .messages import (
    ErrorResponse,
    JsonObject,
    Notification,
    ProtocolError,
    RequestId,
    Response,
    ServerRequest,
    decode_message,
    encode_error_response,
    encode_notification,
    encode_request,
    encode_response,
)

log = logging.getLogger(__name__)

#: JSON-RPC code used when we refuse or fail a server request.
SERVER_REQUEST_FAILED = -32603

Direction = Literal["in", "out"]
Tap = Callable[[Direction, bytes], None]
NotificationSink = Callable[[Notification], None]
ServerRequestHandler = Callable[[ServerRequest], Awaitable[Any]]


class PeerClosed(Exception):
    """The connection to the child is gone; no answer will come."""


class RpcCallError(Exception):
    """The child answered a request with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class ServerRequestRefused(Exception):
    """Raised by a server-request handler to answer with a JSON-RPC error."""

    def __init__(self, message: str, code: int = SERVER_REQUEST_FAILED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Pending:
    __slots__ = ("done", "method", "outcome", "sent_at")

    def __init__(self, method: str) -> None:
        self.method = method
        self.done = trio.Event()
        self.outcome: Response | ErrorResponse | PeerClosed | None = None
        self.sent_at = trio.current_time()


#: How long the rest of a line half written to the child may take.
_REST_OF_LINE_TIMEOUT_S = 30.0


def write_nowait(fd: int, data: bytes) -> int:
    """How much of ``data`` the non-blocking descriptor ``fd`` (a pipe, a
    socket) took at once: 0 if it would block, is closed (``fd`` -1, as a
    closed trio stream reports it: never a stale number) or failed. The
    caller's own stream then writes the rest, and reports any error."""
    if fd < 0:
        return 0
    try:
        return os.write(fd, data)
    except OSError:
        return 0


def _written_at_once(stream: trio.abc.SendStream, data: bytes) -> int:
    """How much of ``data`` a pipe to the child took without blocking; 0 if
    none, or if it is not a pipe (``send_all`` then does it all)."""
    if not isinstance(stream, trio.lowlevel.FdStream):
        return 0
    return write_nowait(stream.fileno(), data)


async def _refuse_all(request: ServerRequest) -> Any:
    raise ServerRequestRefused(f"{request.method} is not handled by this client")


def _ignore(notification: Notification) -> None:
    return None


class JsonRpcPeer:
    """Client end of a newline-delimited JSON-RPC connection.

    ``run`` must be started in a nursery (``await nursery.start(peer.run)``);
    it returns when the child closes its output or :meth:`close` is called,
    after failing every pending request. Notifications carrying a
    ``threadId`` with a registered route go to that route's sink; all others
    go to ``on_notification``. Sinks are plain callables and must not block:
    the reader serves every thread of the child, so one slow consumer must
    never stall the others (sinks enforce their own overflow policy).

    Server requests are answered by ``on_server_request`` in tasks of their
    own, each bounded by ``server_request_timeout_s``; a handler that raises,
    or runs out of time, produces a JSON-RPC error reply so the child never
    waits forever.
    """

    def __init__(
        self,
        send_stream: trio.abc.SendStream,
        receive_stream: trio.abc.ReceiveStream,
        *,
        name: str = "codex",
        on_notification: NotificationSink = _ignore,
        on_server_request: ServerRequestHandler = _refuse_all,
        server_request_timeout_s: float = 30.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        tap: Tap | None = None,
    ) -> None:
        self.name = name
        self._send_stream = send_stream
        self._receive_stream = receive_stream
        self._write_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, _Pending] = {}
        self._routes: dict[str, NotificationSink] = {}
        self.on_notification = on_notification
        self.on_server_request = on_server_request
        self.server_request_timeout_s = server_request_timeout_s
        #: Server requests whose handler bounds its own wait (a client's
        #: function result may take minutes).
        self.self_timed_methods: frozenset[str] = frozenset()
        self._framer = LineFramer(max_line_bytes)
        self._tap = tap
        self._closed_reason: str | None = None
        self._stopped = trio.Event()
        self._cancel_reader: trio.CancelScope | None = None
        self.protocol_errors = 0
        # A child can write garbage at will: its warnings are rate limited.
        self._garbage_log = LogLimiter(log, clock=trio.current_time)

    # -- state --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def oldest_pending_age(self) -> float:
        """How long the oldest unanswered request has waited (0: none waits).

        codex answers every request the bridge makes within milliseconds;
        one left unanswered for seconds says the child is hung.
        """
        if not self._pending:
            return 0.0
        now = trio.current_time()
        return max(now - slot.sent_at for slot in self._pending.values())

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    def close(self, reason: str) -> None:
        """Stop the reader and fail every pending request with ``reason``.

        Idempotent; the first reason wins. Does not touch the process: the
        owner of the child decides how it ends.
        """
        if self._closed_reason is None:
            self._closed_reason = reason
        if self._cancel_reader is not None:
            self._cancel_reader.cancel()
        self._fail_pending()

    def _fail_pending(self) -> None:
        reason = self._closed_reason or "connection closed"
        for slot in self._pending.values():
            if slot.outcome is None:
                slot.outcome = PeerClosed(
                    f"{self.name}: {reason} (while waiting for {slot.method})"
                )
                slot.done.set()

    # -- routing ------------------------------------------------------------

    def add_route(self, thread_id: str, sink: NotificationSink) -> None:
        """Send notifications of ``thread_id`` to ``sink`` until removed."""
        self._routes[thread_id] = sink

    def remove_route(self, thread_id: str, sink: NotificationSink | None = None) -> None:
        """Stop routing ``thread_id`` (only if it still goes to ``sink``, when given).

        Sinks are compared with ``==``: a bound method is a new object at every
        attribute access, so ``turn.on_notification`` is never ``is`` the one
        that was registered, but it is equal to it.
        """
        if sink is None or self._routes.get(thread_id) == sink:
            self._routes.pop(thread_id, None)

    @property
    def route_count(self) -> int:
        """Threads whose notifications have a sink of their own."""
        return len(self._routes)

    def deliver(self, notification: Notification) -> None:
        """Hand a notification to its thread's sink (or the default one).

        The reader uses it for what the child sends; the client side may use
        it for events of its own about a thread (e.g. an approval answered).
        """
        thread_id = notification.params.get("threadId")
        sink = self._routes.get(thread_id) if isinstance(thread_id, str) else None
        (sink or self.on_notification)(notification)

    # -- outgoing -------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self._closed_reason is not None:
            raise PeerClosed(f"{self.name}: {self._closed_reason}")
        await trio.lowlevel.checkpoint_if_cancelled()
        # A line the pipe takes at once is written without a trip through the
        # scheduler (two per call otherwise, on every turn's set-up path).
        written = 0 if self._write_lock.locked() else _written_at_once(self._send_stream, data)
        if written == 0:
            async with self._write_lock:
                await self._send_all(data)
        elif written < len(data):
            # Half a line is out: the rest must follow before anything else,
            # whatever happens to the caller, or the child's input is garbage.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _REST_OF_LINE_TIMEOUT_S
                async with self._write_lock:
                    await self._send_all(data[written:])
            if scope.cancelled_caught:
                self.close("stdin of the child stopped taking a line halfway")
                raise PeerClosed(f"{self.name}: stdin of the child is blocked")
        if self._tap is not None:
            self._tap("out", data.rstrip(b"\n"))

    async def _send_all(self, data: bytes) -> None:
        try:
            await self._send_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close("stdin of the child is closed")
            raise PeerClosed(f"{self.name}: cannot write, stdin is closed") from exc

    async def request(
        self, method: str, params: JsonObject | None = None, *, timeout_s: float = math.inf
    ) -> Any:
        """Send a request and return its ``result``.

        Raises :class:`RpcCallError` for an error reply, :class:`PeerClosed`
        when the child goes away first, and :class:`trio.TooSlowError` after
        ``timeout_s``. On cancellation the request is forgotten; a late answer
        is dropped by the reader.
        """
        request_id = next(self._ids)
        slot = _Pending(method)
        self._pending[request_id] = slot
        try:
            with trio.fail_after(timeout_s):
                await self._write(encode_request(request_id, method, params))
                await slot.done.wait()
        finally:
            del self._pending[request_id]
        outcome = slot.outcome
        if isinstance(outcome, Response):
            return outcome.result
        if isinstance(outcome, ErrorResponse):
            error = outcome.error
            raise RpcCallError(method, error.code, error.message, error.data)
        assert isinstance(outcome, PeerClosed)
        raise outcome

    async def notify(self, method: str, params: JsonObject | None = None) -> None:
        await self._write(encode_notification(method, params))

    # -- incoming -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch until EOF or :meth:`close`; see the class docs."""
        try:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as self._cancel_reader:
                    if self._closed_reason is not None:
                        self._cancel_reader.cancel()
                    task_status.started()
                    await self._read_loop(nursery)
                # The reader is done: answers to server requests can no
                # longer matter, don't wait for their handlers.
                nursery.cancel_scope.cancel()
        finally:
            self.close(self._closed_reason or "codex app-server closed its output")
            self._garbage_log.flush()
            self._stopped.set()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        receive_some = self._receive_stream.receive_some
        feed = self._framer.feed
        while True:
            try:
                data = await receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                rest = self._framer.close()
                if rest is not None:
                    self._dispatch(rest, nursery)
                return
            for line in feed(data):
                self._dispatch(line, nursery)

    def _dispatch(self, line: bytes | OversizedLine, nursery: trio.Nursery) -> None:
        if isinstance(line, OversizedLine):
            self.protocol_errors += 1
            self._garbage_log.log(
                logging.WARNING, "%s: dropped an oversized line of %d bytes", self.name, line.size
            )
            return
        if self._tap is not None:
            self._tap("in", line)
        try:
            message = decode_message(line)
        except ProtocolError as exc:
            self.protocol_errors += 1
            self._garbage_log.log(
                logging.WARNING,
                "%s: ignored a line that is not JSON-RPC (%s): %.200r",
                self.name,
                exc,
                line,
            )
            return
        if isinstance(message, Notification):
            self.deliver(message)
        elif isinstance(message, Response | ErrorResponse):
            slot = self._pending.get(message.id) if message.id is not None else None
            if slot is None or slot.outcome is not None:
                log.debug("%s: dropped a late or unknown answer to id %r", self.name, message.id)
                return
            slot.outcome = message
            slot.done.set()
        else:
            nursery.start_soon(self._answer_server_request, message)

    async def _answer_server_request(self, request: ServerRequest) -> None:
        reply: bytes
        try:
            timeout = (
                math.inf
                if request.method in self.self_timed_methods
                else self.server_request_timeout_s
            )
            with trio.fail_after(timeout):
                result = await self.on_server_request(request)
            reply = encode_response(request.id, result)
        except ServerRequestRefused as exc:
            reply = encode_error_response(request.id, exc.code, exc.message)
        except trio.TooSlowError:
            log.warning(
                "%s: no answer for %s within %.1fs, refusing it",
                self.name,
                request.method,
                self.server_request_timeout_s,
            )
            reply = encode_error_response(
                request.id, SERVER_REQUEST_FAILED, f"{request.method}: no decision in time"
            )
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.name, request.method)
            reply = encode_error_response(request.id, SERVER_REQUEST_FAILED, str(exc))
        with contextlib.suppress(PeerClosed):
            await self._write(reply)
