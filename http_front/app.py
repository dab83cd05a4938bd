"""The ASGI application: OpenAI-compatible endpoints over the turn multiplexer.

Raw ASGI (no framework): the streaming path is the product, and owning it
directly keeps per-chunk overhead to one ``send`` per burst of events.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from bridge.protocol import TokenCounts
from supervisor.multiplexer import ThreadUnavailable, TurnMultiplexer, TurnRefused
from supervisor.turn import FailureKind, Turn, TurnRequest

from .access import (
    SCOPE_KEY,
    AccessPolicy,
    ApiKey,
    client_is_loopback,
    is_preflight,
    key_label,
    request_key,
    require_loopback_host,
)
from .admin import AdminApp
from .asgi import Receive, Scope, Send, send_json, serve_lifespan, with_response_headers
from .chat import ChatRequest, parse_body, parse_chat_request
from .conversation.identity import RequestKind
from .conversation.manager import Conversations
from .errors import ApiError, error_type_for_status
from .render import Aggregate, ReasoningFormat, RenderOptions, TurnRenderer, Usage
from .sse import DONE, KEEPALIVE, ChunkEncoder

log = logging.getLogger(__name__)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]
#: Events rendered into one write at most; bounds a write's size and latency.
_BATCH = 512


class _ClientGone(Exception):
    pass


async def _send_error(send: Send, error: ApiError) -> None:
    headers: list[tuple[bytes, bytes]] = list(error.headers)
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, round(error.retry_after_s))).encode()))
    if error.close_connection:
        headers.append((b"connection", b"close"))
    await send_json(send, error.status, error.encode(), headers)


def _refused(exc: TurnRefused) -> ApiError:
    return ApiError(
        exc.status,
        exc.message,
        type=error_type_for_status(exc.status),
        code=exc.code,
        retry_after_s=exc.retry_after_s,
    )


@attrs.frozen
class FrontOptions:
    """How requests become turns and turns become chunks."""

    reasoning_format: ReasoningFormat = ReasoningFormat.FIELD
    status_events: str = "auto"  # auto: for OpenWebUI requests (X-OpenWebUI-Chat-Id)
    command_output_lines: int = 20
    default_reasoning_effort: str | None = None
    reasoning_summary: str | None = "auto"

    @classmethod
    def from_settings(cls, settings: Any) -> FrontOptions:
        return cls(
            reasoning_format=ReasoningFormat(settings.reasoning_format),
            status_events=settings.status_events,
            command_output_lines=settings.command_output_lines,
            default_reasoning_effort=settings.default_reasoning_effort,
            reasoning_summary=None
            if settings.reasoning_summary == "none"
            else settings.reasoning_summary,
        )

    def render_options(self, scope: Scope) -> RenderOptions:
        status = self.status_events == "always" or (
            self.status_events == "auto" and _header(scope, b"x-openwebui-chat-id") is not None
        )
        return RenderOptions(
            reasoning=self.reasoning_format,
            status_events=status,
            command_output_lines=self.command_output_lines,
        )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (
        length is not None and length.strip() not in (b"", b"0")
    )


def _require_json(scope: Scope) -> None:
    """Refuse a body that does not say it is JSON, before reading it.

    ``application/json`` (with parameters such as ``charset``) or any
    ``+json`` media type. ``text/plain`` and forms above all: a browser sends
    those cross-origin without a preflight.
    """
    raw = _header(scope, b"content-type")
    media = (raw or b"").split(b";", 1)[0].strip().lower()
    kind, _, subtype = media.partition(b"/")
    json_suffix = subtype.endswith(b"+json") and len(subtype) > len(b"+json")
    if media == b"application/json" or (kind and json_suffix):
        return
    given = "no Content-Type" if raw is None else f"Content-Type {raw.decode('latin-1')[:100]!r}"
    raise ApiError(
        415,
        f"Unsupported content type: this endpoint takes a JSON body, but the request has "
        f"{given}. Send Content-Type: application/json.",
        code="unsupported_content_type",
        close_connection=True,  # the body stays unread
    )


#: Routes that need no API key (besides /admin/, which has its own token).
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class BridgeApp:
    """ASGI callable serving ``/v1/chat/completions``, ``/v1/models``, ``/healthz``.

    Every request first passes ``access`` (see :mod:`http_front.access`): its
    Origin, then — on every route but ``/healthz``, ``/readyz`` and
    ``/admin/`` — its API key and the key's turn limit, before its body is read.
    """

    def __init__(
        self,
        multiplexer: TurnMultiplexer,
        *,
        options: FrontOptions | None = None,
        conversations: Conversations | None = None,
        keepalive_interval_s: float = 15.0,
        max_request_body_bytes: int = 8 * 1024 * 1024,
        request_body_timeout_s: float = 60.0,
        max_header_bytes: int = 16 * 1024,
        admin_token: str | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self.mux = multiplexer
        self.access = access or AccessPolicy()
        self.options = options or FrontOptions()
        self.conversations = conversations or Conversations(
            None, workspace_root=multiplexer.workspace_dir or "."
        )
        self.admin = AdminApp(multiplexer, token=admin_token)
        self.keepalive_interval_s = keepalive_interval_s
        self.max_request_body_bytes = max_request_body_bytes
        self.request_body_timeout_s = request_body_timeout_s
        self.max_header_bytes = max_header_bytes
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat_completions,
            ("GET", "/v1/models"): self._list_models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        admin = path.startswith("/admin/")
        try:
            # Decided on the request line and headers alone: a refusal leaves
            # the body unread, so the connection cannot be reused.
            try:
                self._check_header_size(scope)
                cors = self.access.origins.admit(scope, admin=admin)
                if is_preflight(scope):
                    await self._preflight(scope, send)
                    return
                send = with_response_headers(send, cors)
                key = None if admin or path in _OPEN_PATHS else self._authenticate(scope)
                if key is None and not admin and path not in _OPEN_PATHS:
                    self._guard_keyless(scope)
                handler = self._route(scope, path)
                # Every POST to a model route may run a turn: counted per key.
                claim = self.access.keys.claim(key if scope["method"] == "POST" else None)
            except ApiError as exc:
                exc.close_connection = exc.close_connection or _has_body(scope)
                raise
            named = request_key.set(None if key is None else key.name)
            try:
                with claim:
                    await handler(scope, receive, claim.sending(send))
            finally:
                request_key.reset(named)
        except ApiError as exc:
            await _send_error(send, exc)
        except _ClientGone:
            pass

    def _route(self, scope: Scope, path: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        if path.startswith("/admin/"):
            return self.admin
        if path.startswith("/v1/models/") and scope["method"] == "GET":
            return self._get_model
        handler = self._routes.get((scope["method"], path))
        if handler is not None:
            return handler
        if path in {p for (_, p) in self._routes}:
            raise ApiError(405, f"method {scope['method']} is not allowed on {path}")
        raise ApiError(404, f"no such endpoint: {scope['method']} {path}", code="unknown_url")

    def _authenticate(self, scope: Scope) -> ApiKey | None:
        """The request's API key (401 without a valid one when keys are configured);
        its name goes with the request for handlers and log lines."""
        try:
            key = self.access.keys.authenticate(scope.get("headers", []))
        except ApiError:
            client = scope.get("client")
            log.info(
                "401 for %s %s from %s: no valid API key",
                scope["method"],
                scope["path"],
                client[0] if client else "?",
            )
            raise
        if key is not None:
            scope[SCOPE_KEY] = key.name
        return key

    def _check_header_size(self, scope: Scope) -> None:
        """431 past ``max_header_bytes``. The HTTP server refuses a header
        block that grows beyond it while arriving; one that arrived whole in
        a single read is measured here."""
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))
        if size > self.max_header_bytes:
            raise ApiError(
                431,
                f"the request's header fields are too large: at most {self.max_header_bytes} "
                "bytes, request line included",
                close_connection=True,
            )

    def _guard_keyless(self, scope: Scope) -> None:
        """Without API keys, a local client's request must be addressed to a
        loopback name: a page rebound to 127.0.0.1 cannot use the service
        (nor read its GET answers, which carry no Origin)."""
        if not self.access.keys.required and client_is_loopback(scope):
            require_loopback_host(scope, "a service without API keys")

    async def _preflight(self, scope: Scope, send: Send) -> None:
        """204 to an allowed origin's CORS preflight (a refused one got 403)."""
        headers = scope.get("headers", [])
        origin = next(bytes(v) for n, v in headers if n.lower() == b"origin")
        answer = self.access.origins.preflight_headers(origin, headers)
        if _has_body(scope):  # a preflight has none; this one stays unread
            answer.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, within ``max_request_body_bytes`` (413) and
        ``request_body_timeout_s`` (408: a client trickling its body must not
        hold a request open)."""
        with trio.move_on_after(self.request_body_timeout_s):
            return await self._read_body_now(receive)
        raise ApiError(
            408,
            f"the request body did not arrive within {self.request_body_timeout_s:g}s",
            code="request_timeout",
            close_connection=True,  # the rest of the body stays unread
        )

    async def _read_body_now(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_body_bytes:
                raise ApiError(
                    413,
                    f"the request body exceeds {self.max_request_body_bytes} bytes",
                    code="request_too_large",
                    close_connection=True,  # the rest of the body stays unread
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # -- simple endpoints ----------------------------------------------------------

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        pool = self.mux.pool
        ready = len(pool.usable_children)
        body = {
            "status": "ok" if ready else "unavailable",
            "children_ready": ready,
            "children": pool.size,
        }
        if not ready:
            body["reason"] = pool.unavailable_reason()
        await send_json(send, 200 if ready else 503, body)

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready to take a turn now: accepting, and a usable child that can
        reach its model (codex logged in). ``/healthz`` is liveness only."""
        pool = self.mux.pool
        if not self.mux.accepting:
            reason: str | None = "the service is shutting down"
        elif not pool.ready:
            reason = pool.not_ready_reason()
        else:
            reason = None
        body: dict[str, Any] = {
            "ready": reason is None,
            "children_ready": len(pool.usable_children),
        }
        if reason is not None:
            body["reason"] = reason
        if reason is not None and reason == pool.auth_problem:
            body["code"] = "codex_not_authenticated"
        await send_json(send, 200 if reason is None else 503, body)

    async def _model_ids(self) -> list[str]:
        try:
            models = await self.mux.models()
        except TurnRefused as exc:
            raise _refused(exc) from exc
        return [m.id for m in models if not m.hidden]

    @staticmethod
    def _model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "codex"}

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        ids = await self._model_ids()
        await send_json(send, 200, {"object": "list", "data": [self._model_object(i) for i in ids]})

    async def _get_model(self, scope: Scope, receive: Receive, send: Send) -> None:
        model_id = scope["path"][len("/v1/models/") :].rstrip("/")
        await self._check_model(model_id)
        await send_json(send, 200, self._model_object(model_id))

    async def _check_model(self, model: str) -> None:
        try:
            models = await self.mux.models()
        except TurnRefused as exc:
            raise _refused(exc) from exc
        if not any(model in (m.id, m.model) for m in models):
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )

    # -- chat completions -----------------------------------------------------------

    async def _chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        _require_json(scope)
        options = self.options
        body = parse_body(await self._read_body(receive))
        chat = parse_chat_request(
            body,
            default_effort=options.default_reasoning_effort,
            summary=options.reasoning_summary,
        )
        render = options.render_options(scope)
        if chat.model is not None:
            await self._check_model(chat.model)
        kind, key = self.conversations.classify(scope.get("headers", []), body)
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        async with trio.open_nursery() as nursery:
            # A client that goes away cancels everything below — also while it
            # waits for its conversation's previous turn — and open_turn then
            # interrupts the turn on its way out.
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            try:
                await self._converse(kind, key, chat, completion_id, send, render)
            except ApiError as exc:  # raised before any response was started
                await _send_error(send, exc)
            nursery.cancel_scope.cancel()

    async def _converse(
        self,
        kind: RequestKind,
        key: str | None,
        chat: ChatRequest,
        completion_id: str,
        send: Send,
        render: RenderOptions,
    ) -> None:
        """One turn of a conversation (or a keyless request), then its bookkeeping.

        The conversation stays locked until the mapping is written, so the
        next turn of it sees this one.
        """
        async with self.conversations.one_at_a_time(key):
            plan = await self.conversations.plan(kind, key, chat)
            outcomes: list[Outcome] = []
            try:
                run = self._stream if chat.stream else self._complete
                await run(chat, plan.requests, completion_id, send, render, outcomes.append)
            finally:
                # Shielded and bounded: the server reports a finished exchange
                # as a disconnect, which must not cut this short.
                with trio.move_on_after(10, shield=True):
                    outcome = outcomes[0] if outcomes else None
                    if outcome is not None and outcome.completed:
                        await self.conversations.remember(
                            plan,
                            outcome.candidate,
                            outcome.thread_id,
                            outcome.turn_id,
                            outcome.content,
                        )
                    await self.conversations.finish(plan)

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def _attempts(
        self,
        candidates: Sequence[TurnRequest],
        render: RenderOptions,
        body: Callable[[Turn, TurnRenderer], Awaitable[None]],
    ) -> tuple[TurnRenderer, Turn | None, int, TurnRefused | None]:
        """Run the first candidate turn that can run, through ``body``.

        A thread codex cannot resume or roll back moves on to the next
        candidate; a child that died before the client saw anything of the
        turn gets it run again once. Returns the renderer of the last
        attempt, its turn, the candidate's index and a refusal if none ran.
        """
        index = retried = 0
        while True:
            renderer = TurnRenderer(render)
            turn: Turn | None = None
            try:
                async with self.mux.open_turn(candidates[index]) as turn:
                    await body(turn, renderer)
            except ThreadUnavailable as exc:
                if index + 1 < len(candidates):
                    log.info("%s; continuing on a fresh thread (%s)", exc.message, key_label())
                    index += 1
                    continue
                return renderer, turn, index, exc
            except TurnRefused as exc:
                return renderer, turn, index, exc
            if turn is not None and not retried and _retry_elsewhere(turn, renderer):
                log.warning(
                    "%s died before the turn showed anything; retrying (%s)",
                    turn.child_name,
                    key_label(),
                )
                retried = 1
                continue
            return renderer, turn, index, None

    async def _stream(
        self,
        chat: ChatRequest,
        candidates: Sequence[TurnRequest],
        completion_id: str,
        send: Send,
        render: RenderOptions,
        on_outcome: Callable[[Outcome], None],
    ) -> None:
        """Stream the turn; ``on_outcome`` hears how it ended before the last bytes
        go out (the server reports a finished response as a disconnect)."""
        encoder: ChunkEncoder | None = None

        async def body(turn: Turn, renderer: TurnRenderer) -> None:
            nonlocal encoder
            if encoder is None:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
                encoder = ChunkEncoder(completion_id, int(time.time()), chat.model or turn.model)
                await send(
                    {
                        "type": "http.response.body",
                        "body": KEEPALIVE + encoder.role(),
                        "more_body": True,
                    }
                )
            await self._pump(turn, encoder, send, renderer)

        renderer, turn, index, refusal = await self._attempts(candidates, render, body)
        if refusal is not None:
            if encoder is None:
                await _send_error(send, _refused(refusal))
                return
            renderer.refused(refusal.message, refusal.code, refusal.status)
        assert encoder is not None  # started by a first attempt that ran
        tail: list[bytes] = []
        failure = renderer.failure()
        if failure is not None:
            tail.append(encoder.error(failure))
        tail.append(encoder.finish(renderer.finish_reason()))
        if chat.include_usage:
            tail.append(encoder.usage(Usage.of(turn.usage if turn is not None else TokenCounts())))
        tail.append(DONE)
        if turn is not None:
            on_outcome(
                Outcome(index, turn.thread_id, turn.turn_id, renderer.content(), failure is None)
            )
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})

    async def _pump(
        self, turn: Turn, encoder: ChunkEncoder, send: Send, renderer: TurnRenderer
    ) -> None:
        """Render the turn's events to SSE until its terminal event."""
        feed = renderer.feed
        encode = encoder.piece
        while True:
            with trio.move_on_after(self.keepalive_interval_s) as silence:
                event = await turn.next_event()
            if silence.cancelled_caught:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                continue
            if event is None:
                return
            frames = [encode(p) for p in feed(event)]
            for more in turn.next_events_nowait(_BATCH):
                frames.extend(encode(p) for p in feed(more))
            if frames:
                await send(
                    {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
                )

    async def _complete(
        self,
        chat: ChatRequest,
        candidates: Sequence[TurnRequest],
        completion_id: str,
        send: Send,
        render: RenderOptions,
        on_outcome: Callable[[Outcome], None],
    ) -> None:
        aggregate = Aggregate()

        async def body(turn: Turn, renderer: TurnRenderer) -> None:
            nonlocal aggregate
            aggregate = Aggregate()  # a new attempt starts from nothing
            async for event in turn:
                for piece in renderer.feed(event):
                    aggregate.add(piece)

        # Status lines are for live streams only.
        render = attrs.evolve(render, status_events=False)
        renderer, turn, index, refusal = await self._attempts(candidates, render, body)
        if refusal is not None:
            await _send_error(send, _refused(refusal))
            return
        assert turn is not None
        failure = renderer.failure()
        if failure is not None:
            await _send_error(
                send,
                ApiError(failure.status, failure.message, type=failure.type, code=failure.code),
            )
            return
        message: dict[str, Any] = {"role": "assistant", "content": aggregate.content}
        if aggregate.reasoning:
            message["reasoning_content"] = aggregate.reasoning
        on_outcome(Outcome(index, turn.thread_id, turn.turn_id, aggregate.content, True))
        await send_json(
            send,
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.model or turn.model,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": renderer.finish_reason()}
                ],
                "usage": Usage.of(turn.usage).to_openai(),
            },
        )


@attrs.frozen
class Outcome:
    """How a turn ended, for the conversation mapping."""

    candidate: int  # which of the requests ran
    thread_id: str
    turn_id: str
    content: str
    completed: bool


def _retry_elsewhere(turn: Turn, renderer: TurnRenderer) -> bool:
    """A child died under a turn before the client saw any of it: run it again."""
    return turn.failure_kind is FailureKind.CHILD_EXITED and not renderer.shown
