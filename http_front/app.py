"""The ASGI application: routing and access, in front of the doors.

Raw ASGI (no framework): the streaming path is the product, and owning it
directly keeps per-chunk overhead to one ``send`` per burst of events. Every
request passes :mod:`http_front.access` first; then its route's handler gets
an :class:`~http_front.response.Exchange`. A front door is a route here and
its own module (see :mod:`http_front.chat`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from supervisor import Supervisor

from . import admin, docs, health, models
from .access import (
    AccessPolicy,
    ApiKey,
    client_is_loopback,
    is_preflight,
    require_loopback_host,
)
from .admin import AdminRoutes
from .asgi import Receive, Scope, Send, serve_lifespan, with_response_headers
from .chat import route as chat_door
from .chat.route import ChatCompletions
from .conversation.manager import Conversations
from .docs import DocsRoutes
from .errors import ApiError
from .health import HealthRoutes
from .models import ModelRoutes
from .ollama import route as ollama
from .ollama.errors import as_ollama, is_ollama_path
from .openapi import ADMIN_TOKEN, API_KEY, OpenApi
from .options import FrontOptions
from .response import BodyLimits, ClientGone, Exchange, has_body
from .responses import route as responses
from .schema import Operation
from .telemetry import VERSION, RequestRecord, Telemetry
from .tool_park import ToolPark

Handler = Callable[[Exchange], Awaitable[None]]

#: Routes that need no API key (besides /admin/ and /metrics, which have
#: the admin token, and Swagger UI's files under docs.STATIC_PREFIX).
_OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/init.js"})

METRICS = Operation(
    "GET",
    "/metrics",
    "Prometheus metrics",
    "admin",
    description="Prometheus's text format. The admin API's access rule, unless "
    "`metrics_public`; 404 when `metrics = false`.",
    responses={"text/plain": {"type": "string"}},
)


def _operator(path: str) -> bool:
    """The operator's routes: no API key, the admin token's access rule."""
    return path == "/admin" or path.startswith("/admin/") or path == "/metrics"


class BridgeApp:
    """ASGI callable serving ``/v1/chat/completions``, ``/v1/models``, ``/healthz``.

    Every request first passes ``access`` (see :mod:`http_front.access`): its
    Origin, then — on every route but ``/healthz``, ``/readyz`` and
    ``/admin/`` — its API key and the key's turn limit, before its body is read.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        options: FrontOptions | None = None,
        conversations: Conversations | None = None,
        body_limits: BodyLimits | None = None,
        max_header_bytes: int = 16 * 1024,
        admin_token: str | None = None,
        access: AccessPolicy | None = None,
        telemetry: Telemetry | None = None,
        metrics_public: bool = False,
        park: ToolPark | None = None,
    ) -> None:
        self.access = access or AccessPolicy()
        self.telemetry = telemetry or Telemetry(supervisor)
        self.metrics_public = metrics_public
        self.max_header_bytes = max_header_bytes
        conversations = conversations or Conversations(
            None, workspace_root=supervisor.workspace_dir or "."
        )
        chat = ChatCompletions(
            supervisor, conversations, options or FrontOptions(), body_limits or BodyLimits(), park
        )
        model_routes = ModelRoutes(supervisor, (options or FrontOptions()).aliases)
        response_routes = responses.Responses(
            supervisor, conversations, options or FrontOptions(), body_limits or BodyLimits(), park
        )
        ollama_routes = ollama.OllamaRoutes(
            supervisor, conversations, options or FrontOptions(), body_limits or BodyLimits(), park
        )
        health_routes = HealthRoutes(supervisor)
        self.admin = AdminRoutes(supervisor, self.telemetry, token=admin_token)
        #: What every route served does, for /openapi.json: each route's
        #: module describes its own (tests/test_openapi.py holds every
        #: route of the tables below to having one).
        self.operations: tuple[Operation, ...] = (
            *chat_door.OPERATIONS,
            *models.OPERATIONS,
            *responses.OPERATIONS,
            *ollama.OPERATIONS,
            *health.OPERATIONS,
            *admin.OPERATIONS,
            METRICS,
            *docs.OPERATIONS,
        )
        self.openapi = OpenApi(self.operations, version=VERSION, security=self._security)
        doc_routes = DocsRoutes(self.openapi)
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): chat,
            ("POST", "/v1/responses"): response_routes.create,
            ("GET", "/v1/models"): model_routes.list,
            ("GET", "/healthz"): health_routes.healthz,
            ("GET", "/readyz"): health_routes.readyz,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/openapi.json"): doc_routes.document,
            ("GET", docs.PAGE_PATH): doc_routes.page,
            ("GET", docs.INIT_PATH): doc_routes.init_script,
            **ollama_routes.routes,
        }
        #: Routes by path prefix: (method, prefix, the path as /openapi.json names it, handler).
        self._prefixed: tuple[tuple[str, str, str, Handler], ...] = (
            ("GET", ModelRoutes.PREFIX, "/v1/models/{model}", model_routes.get),
            ("GET", responses.PREFIX, "/v1/responses/{response_id}", response_routes.get),
            ("DELETE", responses.PREFIX, "/v1/responses/{response_id}", response_routes.delete),
            ("GET", docs.STATIC_PREFIX, "/docs/static/{version}/{file}", doc_routes.static),
        )

    def route_table(self) -> list[tuple[str, str]]:
        """(method, path) of every route served outside ``/admin/``, paths
        with parameters as /openapi.json names them."""
        return [*self._routes, *((method, path) for method, _, path, _ in self._prefixed)]

    def _security(self, operation: Operation) -> str | None:
        """The scheme a route needs, as /openapi.json says it."""
        if operation.open or (operation.path == "/metrics" and self.metrics_public):
            return None
        return ADMIN_TOKEN if _operator(operation.path) else API_KEY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        record, token = self.telemetry.begin(scope)
        try:
            await self._serve(scope, receive, self.telemetry.sending(record, send), record)
        finally:
            self.telemetry.end(record, token)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        path = scope["path"].rstrip("/") or "/"
        operator = _operator(path)
        try:
            # Decided on the request line and headers alone: a refusal leaves
            # the body unread, so the connection cannot be reused.
            try:
                self._check_header_size(scope)
                cors = self.access.origins.admit(scope, admin=operator)
                if is_preflight(scope):
                    await self._preflight(Exchange(scope, receive, send))
                    return
                send = with_response_headers(send, cors)
                open_path = operator or path in _OPEN_PATHS or path.startswith(docs.STATIC_PREFIX)
                key = None if open_path else self._authenticate(scope, record)
                if key is None and not open_path:
                    self._guard_keyless(scope)
                handler = self._route(scope, path)
                # Every POST to a model route may run a turn: counted per key.
                try:
                    claim = self.access.keys.claim(key if scope["method"] == "POST" else None)
                except ApiError:
                    record.refusal = "key_limit"
                    raise
            except ApiError as exc:
                exc.close_connection = exc.close_connection or has_body(scope)
                raise
            with claim:
                await handler(Exchange(scope, receive, claim.sending(send)))
        except ApiError as exc:
            if is_ollama_path(path):  # Ollama's clients read Ollama's error shape
                exc = as_ollama(exc)
            await Exchange(scope, receive, send).answer_error(exc)
        except ClientGone:
            pass

    def _route(self, scope: Scope, path: str) -> Handler:
        if path == "/admin" or path.startswith("/admin/"):
            return self.admin
        for method, prefix, _, prefixed in self._prefixed:
            if path.startswith(prefix) and scope["method"] == method:
                return prefixed
        handler = self._routes.get((scope["method"], path))
        if handler is not None:
            return handler
        if path in {p for (_, p) in self._routes}:
            raise ApiError(405, f"method {scope['method']} is not allowed on {path}")
        raise ApiError(404, f"no such endpoint: {scope['method']} {path}", code="unknown_url")

    def _authenticate(self, scope: Scope, record: RequestRecord) -> ApiKey | None:
        """The request's API key (401 without a valid one when keys are configured);
        its name goes with the request's record, for log lines and metrics."""
        key = self.access.keys.authenticate(scope.get("headers", []))
        if key is not None:
            record.key = key.name
        return key

    async def _metrics(self, exchange: Exchange) -> None:
        """Prometheus's text format; the admin API's access rule unless
        ``metrics_public``."""
        if not self.metrics_public:
            self.admin.authorize(exchange)
        if not self.telemetry.metrics_enabled:
            raise ApiError(404, "metrics are turned off (metrics = false)", code="unknown_url")
        body = self.telemetry.exposition()
        await exchange.answer_bytes(200, body, CONTENT_TYPE_LATEST.encode())

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

    async def _preflight(self, exchange: Exchange) -> None:
        """204 to an allowed origin's CORS preflight (a refused one got 403)."""
        headers = exchange.headers
        origin = next(bytes(v) for n, v in headers if n.lower() == b"origin")
        answer = self.access.origins.preflight_headers(origin, headers)
        if has_body(exchange.scope):  # a preflight has none; this one stays unread
            answer.append((b"connection", b"close"))
        await exchange.answer_empty(204, answer)
