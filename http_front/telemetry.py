"""What operators see of each request: its record, its log lines, the metrics.

Every request gets a :class:`RequestRecord` as it arrives — its id (the
client's ``X-Request-Id`` when it is a sane one, else a new one), and, as
they become known, the API key's name, the conversation key's hash, the
model, the child, codex's thread and turn ids. The record is the request's
context (:func:`current`): log lines written while serving it carry its
fields (see :mod:`codex_bridge.logs`), and when the request ends
:class:`Telemetry` writes one line for the turn it ran, one access line, and
counts it in the Prometheus metrics (``GET /metrics``).

The timings come from the turn (:class:`supervisor.Turn`): how long it
queued for a child, how long codex took to set it up, how long the consumer
waited for codex's events. What is left of the time before the first byte
is the bridge's own: sent as ``Server-Timing: bridge;dur=…`` on every
response, next to ``codex`` and ``queue``.

Nothing here logs a prompt or an answer unless ``log_content`` is on.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import importlib.metadata
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.protocol import TokenCounts
from supervisor import Supervisor, Turn

from .asgi import Message, Scope, Send
from .errors import ApiError, turn_error

try:
    VERSION = importlib.metadata.version("codex-bridge")
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    VERSION = "unknown"

access_log = logging.getLogger("codex_bridge.access")
turn_log = logging.getLogger("codex_bridge.turn")

REQUEST_ID_HEADER = b"x-request-id"
#: A client's request id is kept if it looks like one (no spaces, quotes or
#: control characters that would garble a log line or a header).
_SANE_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
#: How many recent errors the status page shows.
RECENT_ERRORS = 50

#: Metric route labels: the known routes, everything else is "other".
_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/models",
        "/api/chat",
        "/api/generate",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/version",
        # Ollama's model management, answered 501: worth seeing who calls it.
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/embed",
        "/api/embeddings",
        "/",
        "/openapi.json",
        "/docs",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin",
    }
)
# Seconds; from a refused request's milliseconds to an hour-long agent turn.
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "codex_bridge_request", default=None
)


def current() -> RequestRecord | None:
    """The record of the request being served, if any."""
    return _current.get()


def route_label(path: str) -> str:
    if path.startswith("/admin"):
        return "/admin"
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    if path.startswith("/docs/"):
        return "/docs"
    return path if path in _ROUTES else "other"


def conversation_hash(key: str) -> str:
    """A conversation key as log lines show it: not the key itself (a chat
    id is as good as a secret to whoever can replay it)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name.lower() == REQUEST_ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    return uuid.uuid4().hex


@attrs.define(eq=False)
class RequestRecord:
    """One request, as far as it got (see the module docstring)."""

    id: str
    method: str
    path: str
    client: str
    started: float  # trio clock
    started_wall: float  # unix seconds
    key: str | None = None
    conversation: str | None = None
    model: str | None = None
    #: The turns it ran (a retry runs a second one), the last one current.
    turns: list[Turn] = attrs.Factory(list)
    retried: bool = False
    #: The answer ended with this many calls of the client's functions: its
    #: turn waits for their results (and is counted when it ends).
    tool_calls: int = 0
    #: Why no turn ran (a RefusalKind's name, or "key_limit").
    refusal: str | None = None
    #: The error the client was told, whole or in its stream.
    error: ApiError | None = None
    status: int | None = None
    first_byte_at: float | None = None
    bytes_sent: int = 0
    #: Time spent reading the request's body (the client's time).
    body_s: float = 0.0
    #: Time codex took outside the turns (listing its models).
    codex_s: float = 0.0
    #: Time waiting for a child, of a request refused in the end.
    refused_queue_s: float = 0.0
    #: With ``log_content``: the prompt and the answer, for the turn's line.
    keep_content: bool = False
    prompt: str | None = None
    answer: str | None = None

    @property
    def route(self) -> str:
        return route_label(self.path)

    @property
    def turn(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def ran(self, turn: Turn, *, retried: bool = False) -> None:
        self.turns.append(turn)
        self.retried = self.retried or retried
        self.model = self.model or turn.model or None

    def context(self) -> dict[str, str]:
        """The fields every log line about the request carries."""
        fields = {"request_id": self.id}
        if self.key is not None:
            fields["key"] = self.key
        if self.conversation is not None:
            fields["conversation"] = self.conversation
        turn = self.turn
        if turn is not None:
            fields["child"] = turn.child_name
            fields["thread_id"] = turn.thread_id
            if turn.turn_id:
                fields["turn_id"] = turn.turn_id
        return fields

    def timings(self, now: float) -> tuple[float, float, float]:
        """(bridge, codex, queue) seconds of the time since the request came."""
        codex = self.codex_s + sum(t.setup_s + t.waited_s for t in self.turns)
        queue = self.refused_queue_s + sum(t.queue_wait_s for t in self.turns)
        bridge = max(0.0, now - self.started - codex - queue - self.body_s)
        return bridge, codex, queue

    def describe(self, now: float) -> dict[str, Any]:
        """The request as the status page lists it."""
        turn = self.turn
        phase = "queued" if turn is None else "running"
        if self.first_byte_at is not None:
            phase = "streaming"
        return {
            "id": self.id,
            "method": self.method,
            "route": self.path,
            "model": self.model or (turn.model if turn is not None else None),
            "key": self.key,
            "child": turn.child_name if turn is not None else None,
            "thread_id": turn.thread_id if turn is not None else None,
            "turn_id": (turn.turn_id or None) if turn is not None else None,
            "age_s": round(now - self.started, 3),
            "phase": phase,
        }


class Telemetry:
    """Request records, log lines and metrics of one service."""

    def __init__(
        self,
        supervisor: Supervisor | None = None,
        *,
        log_content: bool = False,
        metrics: bool = True,
    ) -> None:
        self.log_content = log_content
        self.metrics_enabled = metrics
        #: Requests being served, oldest first.
        self._active: dict[RequestRecord, None] = {}
        self.recent_errors: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_ERRORS
        )
        self.started_wall = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        self._define_metrics()
        if supervisor is not None:
            self.registry.register(SupervisorCollector(supervisor))
        self.registry.register(ProcessCollector(namespace="codex_bridge", registry=None))

    def _define_metrics(self) -> None:
        r, p = self.registry, "codex_bridge_"
        self.requests = Counter(
            p + "requests", "HTTP requests answered, by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            p + "request_duration_seconds", "Request to the last byte of its answer",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Request to codex's first text or reasoning delta", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            p + "bridge_overhead_seconds",
            "Time before the first byte that was neither codex's nor the queue's "
            "(Server-Timing: bridge)", ["route"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.turn_duration = Histogram(
            p + "turn_duration_seconds", "codex turns, start to end, by outcome", ["outcome"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "Time a turn waited for a child with room for it",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            p + "refusals", "Requests refused before a turn started, by why", ["kind"],
            registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            p + "tokens", "Tokens of finished turns, by kind", ["kind"], registry=r
        )
        self.key_tokens = Counter(
            p + "key_tokens", "Tokens of finished turns, by API key name and kind",
            ["key", "kind"], registry=r,
        )  # fmt: skip

    # -- a request's life ------------------------------------------------------------

    def begin(self, scope: Scope) -> tuple[RequestRecord, contextvars.Token[Any]]:
        client = scope.get("client")
        record = RequestRecord(
            id=request_id_of(scope),
            method=str(scope.get("method", "")),
            path=str(scope.get("path", "")),
            client=f"{client[0]}" if client else "-",
            started=trio.current_time(),
            started_wall=time.time(),
            keep_content=self.log_content,
        )
        self._active[record] = None
        return record, _current.set(record)

    def sending(self, record: RequestRecord, send: Send) -> Send:
        """``send`` that stamps the answer (``x-request-id``, ``Server-Timing``)
        and notes its status, first byte and size."""
        request_id = record.id.encode()

        async def stamped(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                now = trio.current_time()
                record.status = message["status"]
                record.first_byte_at = now
                bridge, codex, queue = record.timings(now)
                if self.metrics_enabled:
                    self.overhead.labels(record.route).observe(bridge)
                timing = (
                    f"bridge;dur={bridge * 1000:.2f}, codex;dur={codex * 1000:.1f}, "
                    f"queue;dur={queue * 1000:.1f}"
                ).encode()
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (REQUEST_ID_HEADER, request_id),
                        (b"server-timing", timing),
                    ],
                }
            elif kind == "http.response.body":
                record.bytes_sent += len(message.get("body", b""))
            await send(message)

        return stamped

    def end(self, record: RequestRecord, token: contextvars.Token[Any]) -> None:
        """The request is over (answered, failed, or its client gone)."""
        self._active.pop(record, None)
        now = trio.current_time()
        try:
            self._turn_ended(record, now)
            self._access(record, now)
        finally:
            _current.reset(token)

    def _turn_ended(self, record: RequestRecord, now: float) -> None:
        turn = record.turn
        route = record.route
        if record.refusal is not None and self.metrics_enabled:
            self.refusals.labels(record.refusal).inc()
            if record.refused_queue_s:
                self.queue_wait.observe(record.refused_queue_s)
        if turn is None:
            return
        outcome = turn.outcome
        parked = outcome is None and record.tool_calls > 0
        status = (
            outcome.status.value
            if outcome is not None
            else "waiting on the client's function calls"
            if parked
            else "interrupted"
        )
        usage = _total_usage(record.turns)  # a retried request used both turns' tokens
        # A parked turn is measured and counted once, by the request it ends in.
        if self.metrics_enabled and not parked:
            for t in record.turns:
                self.queue_wait.observe(t.queue_wait_s)
            ended = turn.ended_at if turn.ended_at is not None else now
            self.turn_duration.labels(status).observe(max(0.0, ended - turn.started_at))
            if turn.first_output_at is not None:
                self.ttft.labels(route).observe(max(0.0, turn.first_output_at - record.started))
            counts = {
                "input": usage.input_tokens,
                "cached_input": usage.cached_input_tokens,
                "output": usage.output_tokens,
                "reasoning_output": usage.reasoning_output_tokens,
            }
            for kind, count in counts.items():
                if count:
                    self.tokens.labels(kind).inc(count)
                    if record.key is not None:
                        self.key_tokens.labels(record.key, kind).inc(count)
        error = turn_error(outcome) if outcome is not None else None
        failure = None
        if outcome is not None and outcome.failure is not None:
            failure = outcome.failure.value
        elif outcome is not None and outcome.codex_error is not None:
            failure = outcome.codex_error.kind or "codex_error"
        fields: dict[str, Any] = {
            "event": "turn",
            "route": route,
            "model": record.model or turn.model or None,
            "outcome": status,
            "failure": failure,
            "ttft_ms": _ms(turn.first_output_at - record.started)
            if turn.first_output_at is not None
            else None,
            "duration_ms": _ms(now - record.started),
            "queue_wait_ms": _ms(sum(t.queue_wait_s for t in record.turns)),
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_output_tokens,
            "retried": record.retried,
        }
        if record.keep_content:
            fields["prompt"] = record.prompt
            fields["answer"] = record.answer
        text = (
            f"turn {status}{f' ({failure})' if failure else ''}: {route} "
            f"model={fields['model'] or '-'} ttft={_show_ms(fields['ttft_ms'])} "
            f"duration={fields['duration_ms']}ms queue={fields['queue_wait_ms']}ms "
            f"tokens in={usage.input_tokens} cached={usage.cached_input_tokens} "
            f"out={usage.output_tokens} reasoning={usage.reasoning_output_tokens}"
            f"{' retried' if record.retried else ''}"
        )
        if error is not None:
            text += f": {_clip(error.message)}"
        # Interrupted: its client went away (the bridge interrupts for no
        # other reason); nothing an operator must look at.
        level = (
            logging.INFO if parked or status in ("completed", "interrupted") else logging.WARNING
        )
        if error is not None and level == logging.WARNING:
            self._note_error(record, error, now)
        turn_log.log(level, "%s", text, extra={"fields": fields})

    def _access(self, record: RequestRecord, now: float) -> None:
        status = record.status
        route = record.route
        duration = now - record.started
        if self.metrics_enabled:
            self.requests.labels(route, str(status) if status is not None else "none").inc()
            self.request_duration.labels(route).observe(duration)
        error = record.error
        fields: dict[str, Any] = {
            "event": "access",
            "client": record.client,
            "method": record.method,
            "path": record.path,
            "status": status,
            "duration_ms": _ms(duration),
            "bytes": record.bytes_sent,
        }
        text = (
            f'{record.client} "{record.method} {record.path}" {status if status else "-"} '
            f"{fields['duration_ms']}ms {record.bytes_sent}B"
        )
        if status is None:
            text += " (client gone before an answer)"
        if error is not None:
            fields.update(error_type=error.type, error_code=error.code, error=error.message)
            text += f" {error.code or error.type}: {_clip(error.message)}"
            # A turn's own error is the turn line's to list (a failure is; an
            # interruption, its client gone, is not); any other, listed here.
            outcome = record.turn.outcome if record.turn is not None else None
            if outcome is None or turn_error(outcome) is None:
                self._note_error(record, error, now)
        level = logging.WARNING if status is not None and status >= 500 else logging.INFO
        access_log.log(level, "%s", text, extra={"fields": fields})

    def _note_error(self, record: RequestRecord, error: ApiError, now: float) -> None:
        if self.recent_errors and self.recent_errors[0]["request_id"] == record.id:
            return  # one entry per request
        self.recent_errors.appendleft(
            {
                "at": round(record.started_wall + (now - record.started), 3),
                "request_id": record.id,
                "route": record.path,
                "status": error.status,
                "type": error.type,
                "code": error.code,
                "message": _clip(error.message, 500),
            }
        )

    # -- what operators read -----------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [
            record.describe(now)
            for record in self._active
            if record.route not in ("/admin", "/metrics")  # the operator's own polling
        ]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _total_usage(turns: list[Turn]) -> TokenCounts:
    counts = [turn.usage for turn in turns]
    return TokenCounts(
        total_tokens=sum(c.total_tokens for c in counts),
        input_tokens=sum(c.input_tokens for c in counts),
        cached_input_tokens=sum(c.cached_input_tokens for c in counts),
        output_tokens=sum(c.output_tokens for c in counts),
        reasoning_output_tokens=sum(c.reasoning_output_tokens for c in counts),
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _show_ms(value: float | None) -> str:
    return "-" if value is None else f"{value}ms"


def _clip(text: str, limit: int = 300) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def note_error(error: ApiError) -> None:
    """The request being served told its client ``error``."""
    record = _current.get()
    if record is not None:
        record.error = error


# -- the pool, read at scrape time ------------------------------------------------------


class SupervisorCollector(Collector):
    """Gauges and counters the supervisor keeps as plain state: read when
    Prometheus scrapes, not kept up to date on every change."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def describe(self) -> Iterator[Metric]:
        return iter(())  # not known before the first collect; nothing to check

    def collect(self) -> Iterator[Metric]:
        supervisor = self.supervisor
        status = supervisor.status()
        p = "codex_bridge_"
        yield _gauge(p + "turns_active", "Turns running now", status["active_turns"])
        yield _gauge(p + "queue_depth", "Requests waiting for a child", status["queued"])
        by_state: dict[str, int] = dict.fromkeys(
            ("idle", "busy", "draining", "starting", "stopping", "broken"), 0
        )
        rss = GaugeMetricFamily(
            p + "child_rss_bytes", "Resident memory of each child, by slot", labels=["child"]
        )
        for entry in status["children"]:
            state = str(entry.get("state", "broken"))
            if entry.get("breaker") == "open" or state == "stopped":
                state = "broken"
            by_state[state] = by_state.get(state, 0) + 1
            if entry.get("rss_mib") is not None:
                rss.add_metric([str(entry["slot"])], float(entry["rss_mib"]) * 1024 * 1024)
        children = GaugeMetricFamily(
            p + "children", "Children by state (broken: exited, or its breaker open)",
            labels=["state"],
        )  # fmt: skip
        for state, count in by_state.items():
            children.add_metric([state], count)
        yield children
        yield rss
        restarts = CounterMetricFamily(
            p + "child_restarts", "Children that ended and were replaced, by why",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in supervisor.restart_counts().items():
            restarts.add_metric([reason], count)
        yield restarts
        ratio = GaugeMetricFamily(
            p + "codex_rate_limit_used_ratio",
            "Share of the account's rate-limit window used, as codex last reported it",
            labels=["window"],
        )
        for window in supervisor.rate_limits():
            ratio.add_metric([window.name], window.used_percent / 100)
        yield ratio
        yield _gauge(p + "ready", "1 when the service can take a turn now",
                     int(supervisor.readiness().ready))  # fmt: skip


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
