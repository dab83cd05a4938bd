"""The Ollama API's routes: ``/``, ``/api/version``, ``/api/tags``, ``/api/show``,
``/api/ps``, ``/api/chat``, ``/api/generate``, and clear refusals of the
routes that manage local model files.

Models: codex's models and the operator's aliases, each listed with the
``:latest`` tag and accepted with or without it (any other tag names
nothing: 404). They run remotely, so what Ollama measures of a local model
file is given honestly as nothing: ``size`` 0, ``size_vram`` 0, no
parameter size or quantization; ``digest`` is the SHA-256 of the name, and
``modified_at`` the time this service started. ``/api/ps`` lists codex's
default model while a codex child is ready to run turns — codex loads
nothing per model — expiring never.

``/api/chat`` runs a conversation's turn exactly as chat completions do (the
same conversation mapping, history replay and ``X-OpenWebUI-Chat-Id``);
``/api/generate`` runs one stateless turn. Both stream NDJSON by default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from bridge.protocol import ModelInfo, TokenCounts
from supervisor import Supervisor, Turn, TurnEnded

from .. import telemetry
from ..chat.present import ChatOptions, ReasoningFormat
from ..chat.request import parse_body
from ..conversation.identity import RequestKind
from ..conversation.manager import Conversations, Plan
from ..door import Door
from ..errors import ApiError
from ..models import Alias, catalog, model_turn
from ..pieces import Usage
from ..render import TurnRenderer
from ..response import EventStream, Exchange, open_event_stream
from ..schema import JsonSchema, Operation
from ..tool_park import Held, ToolPark
from ..turns import (
    Answer,
    Attempt,
    Consume,
    Ending,
    FinishReason,
    answer_of,
    calls_complete,
    converse,
    ending,
    go_on,
    run_turn,
)
from .encode import (
    NDJSON_HEADERS,
    Api,
    OllamaEncoder,
    OllamaPresenter,
    WholeAnswer,
    error_object,
    line,
    stats_of,
    timestamp,
)
from .errors import as_ollama
from .request import (
    CHAT_BODY,
    GENERATE_BODY,
    SHOW_BODY,
    TAG,
    OllamaRequest,
    base_name,
    parse_chat,
    parse_generate,
)
from .tools import CallBook, calls_key, resume

#: The Ollama version ``/api/version`` reports. Clients read it to decide
#: what the server can do: 0.12.0 is the first Ollama with remote ("cloud")
#: models — models listed with size 0 that run elsewhere, what codex's are —
#: and is past every feature this door serves (structured outputs 0.5,
#: ``think`` 0.9, thinking levels 0.11), so no client turns a feature off.
OLLAMA_VERSION = "0.12.0"
RUNNING = b"Ollama is running"
#: ``expires_at`` of a model that stays "loaded" (Ollama's "forever").
NEVER = "9999-12-31T23:59:59Z"
#: codex's reasoning efforts, lowest first.
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
#: Events rendered into one write at most; bounds a write's size and latency.
_BATCH = 512

Handler = Callable[[Exchange], Any]


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "codex",
        "family": "codex",
        "families": ["codex"],
        "parameter_size": "",
        "quantization_level": "",
    }


def _tagged(name: str) -> str:
    return f"{name}:{TAG}"


def _lowest_effort(info: ModelInfo | None) -> str | None:
    supported = {o.reasoning_effort for o in info.supported_reasoning_efforts} if info else set()
    return next((effort for effort in _EFFORTS if effort in supported), None)


def _capabilities(info: ModelInfo | None) -> list[str]:
    # codex's model/list gives inputModalities ["text", "image"] unless a
    # model says otherwise, and the bridge takes images for every model.
    found = ["completion", "vision"]
    if info is not None and info.supported_reasoning_efforts:
        found.append("thinking")
    return found


@attrs.frozen
class Resolved:
    """A model name a client used: codex's model behind it, and the alias if one."""

    name: str  # without the tag
    info: ModelInfo | None
    alias: Alias | None = None


class OllamaRoutes(Door):
    def _prepare(self) -> None:
        self.started_at = timestamp()
        #: Parked calls, for clients that send no call ids back.
        self.calls = CallBook()

    @property
    def routes(self) -> dict[tuple[str, str], Handler]:
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/"): self.root,
            ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags,
            ("POST", "/api/show"): self.show,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
        }
        for method, path in REFUSED:
            routes[(method, path)] = self.refused
        return routes

    # -- listings ------------------------------------------------------------------

    async def root(self, exchange: Exchange) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if exchange.scope["method"] == "HEAD":
            headers.append((b"content-length", str(len(RUNNING)).encode()))
            await exchange.answer_empty(200, headers)
            return
        await exchange.answer_bytes(200, RUNNING, headers[0][1])

    async def version(self, exchange: Exchange) -> None:
        await exchange.answer_json(200, {"version": OLLAMA_VERSION})

    async def _named(self) -> list[Resolved]:
        """Every listed name: codex's visible models, then the aliases."""
        models = await catalog(self.supervisor)
        listed = [Resolved(m.id, m) for m in models if not m.hidden]
        for alias in self.options.aliases.values():
            listed.append(Resolved(alias.name, _target(models, alias), alias))
        return listed

    def _listing(self, model: Resolved) -> dict[str, Any]:
        return {
            "name": _tagged(model.name),
            "model": _tagged(model.name),
            "modified_at": self.started_at,
            "size": 0,
            "digest": _digest(model.name),
            "details": _details(),
        }

    async def tags(self, exchange: Exchange) -> None:
        models = [self._listing(m) for m in await self._named()]
        await exchange.answer_json(200, {"models": models})

    async def ps(self, exchange: Exchange) -> None:
        loaded: list[dict[str, Any]] = []
        if self.supervisor.readiness().ready:
            models = await catalog(self.supervisor)
            default = next((m for m in models if m.is_default), None)
            if default is not None:
                entry = self._listing(Resolved(default.id, default))
                del entry["modified_at"]
                loaded.append({**entry, "expires_at": NEVER, "size_vram": 0})
        await exchange.answer_json(200, {"models": loaded})

    async def resolve(self, name: str) -> Resolved:
        """The model a client named; 404 ``model 'x' not found`` for anything else."""
        base = base_name(name)
        models = await catalog(self.supervisor)
        alias = self.options.aliases.get(base)
        if alias is not None:
            return Resolved(base, _target(models, alias), alias)
        for model in models:
            if base in (model.id, model.model):
                return Resolved(base, model)
        raise ApiError(404, f"model '{name}' not found", param="model", code="model_not_found")

    async def show(self, exchange: Exchange) -> None:
        exchange.require_json()
        body = parse_body(await exchange.read_body(self.limits))
        SHOW_BODY.check(body)
        name = body.get("model") or body["name"]
        model = await self.resolve(name)
        info = model.info
        model_info: dict[str, Any] = {
            "general.architecture": "codex",
            "general.basename": model.name,
        }
        if info is not None:
            model_info |= {
                "codex.model": info.model,
                "codex.display_name": info.display_name,
                "codex.description": info.description,
                "codex.default_reasoning_effort": info.default_reasoning_effort,
                "codex.reasoning_efforts": [
                    o.reasoning_effort for o in info.supported_reasoning_efforts
                ],
            }
        if model.alias is not None:
            model_info["codex_bridge.alias_of"] = model.alias.model or (info.id if info else None)
        await exchange.answer_json(
            200,
            {
                "modelfile": f"# {model.name}: a model of codex, served by codex-bridge; it "
                f"runs remotely.\nFROM {_tagged(model.name)}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": _details(),
                "model_info": model_info,
                "capabilities": _capabilities(info),
                "modified_at": self.started_at,
            },
        )

    async def refused(self, exchange: Exchange) -> None:
        raise ApiError(
            501,
            f"{exchange.path} is not available: this server serves codex's models, which run "
            "remotely; there are no local models to pull, push, create, copy or delete, and no "
            "embeddings",
            code="not_supported",
        )

    # -- turns ---------------------------------------------------------------------

    async def chat(self, exchange: Exchange) -> None:
        await self._turn(exchange, "chat")

    async def generate(self, exchange: Exchange) -> None:
        await self._turn(exchange, "generate")

    async def _turn(self, exchange: Exchange, api: Api) -> None:
        began = trio.current_time()
        exchange.require_json()
        body = parse_body(await exchange.read_body(self.limits))
        options = self.options
        if api == "chat":
            request = parse_chat(
                body,
                limits=options.images,
                default_effort=options.default_reasoning_effort,
                summary=options.reasoning_summary,
                client_tools=self.client_tools is not None,
            )
        else:
            request = parse_generate(
                body,
                limits=options.images,
                default_effort=options.default_reasoning_effort,
                summary=options.reasoning_summary,
            )
        model = await self.resolve(request.model)
        record = telemetry.current()
        if record is not None:
            record.model = model.name
        encoder = OllamaEncoder(api, request.model)
        if request.load_only is not None:  # Ollama's "load the model": nothing to run
            stats = stats_of(began, trio.current_time(), None, None, Usage.of(TokenCounts()))
            await exchange.answer_json(200, encoder.final(timestamp(), request.load_only, stats))
            return
        turn = request.turn
        if request.thinking.off:
            turn = attrs.evolve(turn, effort=_lowest_effort(model.info))
        turn = await model_turn(self.supervisor, options.aliases, model.name, turn)
        request = attrs.evolve(request, turn=turn)
        if api == "chat":
            kind, key = self.conversations.classify(exchange.headers, body)
        else:
            kind, key = RequestKind.STATELESS, None
        if record is not None:
            record.conversation = None if key is None else telemetry.conversation_hash(key)
        shown = request.thinking.shown and options.reasoning_format is not ReasoningFormat.HIDDEN
        chat_options = ChatOptions(
            reasoning=ReasoningFormat.FIELD if shown else ReasoningFormat.HIDDEN,
            command_output_lines=options.command_output_lines,
        )
        uses_tools = bool(request.turn.tools or request.returned)
        answer = _Answer(
            self.supervisor,
            exchange,
            request,
            encoder,
            chat_options,
            options.keepalive_interval_s,
            began,
            self.client_tools if uses_tools else None,
            self.conversations,
            self.calls,
            key,
        )
        async with exchange.cancelled_on_disconnect():
            respond = answer.stream if request.stream else answer.whole
            try:
                if request.returned is not None and answer.park is not None:
                    await self._resume(answer, key)
                else:
                    await converse(self.conversations, kind, key, request, respond)
            except ApiError as exc:  # raised before any response was started
                await exchange.answer_error(as_ollama(exc))

    async def _resume(self, answer: _Answer, key: str | None) -> None:
        """The request brings the results of the model's calls: the turn
        waiting on them goes on, and its rest is this request's answer."""
        request = answer.request
        assert answer.park is not None
        assert request.returned is not None
        returned = request.returned
        async with (
            self.conversations.one_at_a_time(key),
            resume(answer.park, self.calls, key, returned) as held,
        ):
            await go_on(
                self.conversations, held, request, answer.stream if request.stream else answer.whole
            )


def _target(models: list[ModelInfo], alias: Alias) -> ModelInfo | None:
    """The codex model an alias runs (its own, or codex's default)."""
    for model in models:
        if (alias.model is None and model.is_default) or alias.model in (model.id, model.model):
            return model
    return None


@attrs.define
class _Answer:
    """One request's answer, streamed or whole."""

    supervisor: Supervisor
    exchange: Exchange
    request: OllamaRequest
    encoder: OllamaEncoder
    options: ChatOptions
    keepalive_s: float
    began: float
    #: Where the turn waits on the client's function calls (None: no tools).
    park: ToolPark | None = None
    conversations: Conversations | None = None
    book: CallBook | None = None
    #: The conversation key (calls are booked in it).
    key: str | None = None
    ready_at: float | None = None

    def _presenter(self) -> OllamaPresenter:
        return OllamaPresenter(self.options, self.request.stops)

    def _ending(self, attempt: Attempt, presenter: OllamaPresenter, calls: bool) -> Ending:
        """How the answer ends; a stop sequence ends it normally."""
        return ending(attempt, stopped=presenter.stopped and attempt.turn is not None, calls=calls)

    def _final(self, attempt: Attempt, end: Ending, **whole: Any) -> dict[str, Any]:
        now = trio.current_time()
        stats = stats_of(self.began, now, attempt.turn, self.ready_at, end.usage)
        # Ollama ends an answer that calls functions as any other: "stop".
        reason = end.finish_reason
        done_reason = FinishReason.STOP if reason is FinishReason.TOOL_CALLS else reason
        return self.encoder.final(timestamp(), done_reason.value, stats, **whole)

    async def _run(self, plan: Plan, consume: Consume, resumed: Held | None) -> Attempt:
        return await run_turn(self.supervisor, self.park, plan, consume, resumed)

    def _wait_for_calls(self, plan: Plan, turn: Turn, presenter: OllamaPresenter) -> bool:
        """Whether the answer ends with the client's function calls: then
        the turn waits for their results, parked (and booked for clients
        that send no call ids back)."""
        calls = presenter.calls
        if not calls or presenter.stopped or turn.outcome is not None or self.park is None:
            return False
        conversations = self.conversations
        cleanup = None if conversations is None else partial(conversations.finish, plan)
        ids = [call.call_id for call in calls]
        self.park.wait_for(turn, ids, cleanup)
        if self.book is not None:
            signed = ((call.name, call.arguments) for call in calls)
            self.book.add(calls_key(self.key, self.request.history, signed), ids, turn)
        return True

    async def stream(
        self, plan: Plan, remember: Callable[[Answer], None], resumed: Held | None = None
    ) -> bool:
        """Stream the turn; True if it lives on, waiting on the client's calls."""
        presenter = self._presenter()
        calls = False
        keepalive = line(self.encoder.empty(timestamp()))
        async with open_event_stream(
            self.exchange, keepalive_s=self.keepalive_s, keepalive=keepalive, headers=NDJSON_HEADERS
        ) as out:

            async def consume(turn: Turn) -> bool:
                nonlocal presenter, calls
                self.ready_at = trio.current_time()
                presenter = self._presenter()  # a new attempt starts from nothing
                if not out.started:
                    await out.start(b"")
                await _pump(turn, TurnRenderer(), presenter, self.encoder, out)
                calls = self._wait_for_calls(plan, turn, presenter)
                return presenter.shown > 0

            attempt = await self._run(plan, consume, resumed)
            end = self._ending(attempt, presenter, calls)
            if not out.started:  # refused before anything was sent
                assert end.error is not None
                await self.exchange.answer_error(as_ollama(end.error))
                return False
            created = timestamp()
            tail = [line(c) for d in presenter.finish() if (c := self.encoder.chunk(d, created))]
            if end.error is not None:
                tail.append(line(error_object(end.error.message)))
            else:
                tail.append(line(self._final(attempt, end)))
            answer = answer_of(attempt, presenter.content())
            if answer is not None:
                remember(answer)
            await out.finish(b"".join(tail))
        return calls

    async def whole(
        self, plan: Plan, remember: Callable[[Answer], None], resumed: Held | None = None
    ) -> bool:
        """Answer with one JSON object; True if the turn lives on, waiting
        on the client's calls."""
        gathered = WholeAnswer()
        presenter = self._presenter()
        calls = False

        async def consume(turn: Turn) -> bool:
            nonlocal gathered, presenter, calls
            self.ready_at = trio.current_time()
            gathered = WholeAnswer()  # a new attempt starts from nothing
            presenter = self._presenter()
            renderer = TurnRenderer()
            while not presenter.stopped and (event := await turn.next_event()) is not None:
                for piece in renderer.feed(event):
                    for delta in presenter.present(piece):
                        gathered.add(delta)
                if renderer.calls_in and await calls_complete(turn):
                    break  # every call of this step is in: the turn waits
            calls = self._wait_for_calls(plan, turn, presenter)
            return presenter.shown > 0

        attempt = await self._run(plan, consume, resumed)
        end = self._ending(attempt, presenter, calls)
        if end.error is not None:
            await self.exchange.answer_error(as_ollama(end.error))
            return False
        for delta in presenter.finish():
            gathered.add(delta)
        answer = answer_of(attempt, presenter.content())
        if answer is not None:
            remember(answer)
        body = self._final(
            attempt,
            end,
            content="".join(gathered.content),
            thinking="".join(gathered.thinking),
            tool_calls=gathered.tool_calls,
        )
        await self.exchange.answer_json(200, body)
        return calls


async def _pump(
    turn: Turn,
    renderer: TurnRenderer,
    presenter: OllamaPresenter,
    encoder: OllamaEncoder,
    out: EventStream,
) -> None:
    """Render the turn's events to NDJSON lines until its end or a stop sequence."""
    feed = renderer.feed
    present = presenter.present
    chunk = encoder.chunk
    while not presenter.stopped:
        event = await turn.next_event()
        if event is None:
            return
        created = timestamp()
        lines: list[bytes] = []
        for one in (event, *turn.next_events_nowait(_BATCH)):
            for piece in feed(one):
                for delta in present(piece):
                    obj = chunk(delta, created)
                    if obj is not None:
                        lines.append(line(obj))
        if lines:
            await out.send(b"".join(lines))
        if isinstance(event, TurnEnded):
            return
        if renderer.calls_in and await calls_complete(turn):
            return  # every call of this step is in: the turn waits for results


# -- what /openapi.json says --------------------------------------------------------

#: Routes of Ollama's that manage local model files or make embeddings.
REFUSED = (
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
)

_DETAILS: JsonSchema = {
    "type": "object",
    "properties": {
        k: {"type": "string"}
        for k in ("parent_model", "format", "family", "parameter_size", "quantization_level")
    }
    | {"families": {"type": "array", "items": {"type": "string"}}},
}
_LISTED: JsonSchema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "model": {"type": "string"},
        "modified_at": {"type": "string", "format": "date-time"},
        "size": {"type": "integer"},
        "digest": {"type": "string"},
        "details": _DETAILS,
    },
}
_DONE: JsonSchema = {
    "type": "object",
    "description": "The whole answer (stream: false), or the stream's last line.",
    "properties": {
        "model": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "done": {"type": "boolean"},
        "done_reason": {"enum": ["stop", "length", "load", "unload"]},
        **{
            name: {"type": "integer"}
            for name in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            )
        },
    },
}
_NDJSON = (
    "application/x-ndjson (the default, stream: true): one JSON object a line with "
    "`done: false` and the next piece of the answer (a call of the client's functions "
    "on a line of its own), the last with `done: true`, "
    '`done_reason` and the numbers; a failure mid-stream ends it with {"error": "…"}.'
)
_TAG = "Ollama"


def _with(schema: JsonSchema, **properties: JsonSchema) -> JsonSchema:
    return {**schema, "properties": {**schema["properties"], **properties}}


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/",
        "Ollama is running",
        _TAG,
        open=True,
        description="text/plain `Ollama is running` (HEAD too): Ollama clients probe it.",
    ),
    Operation("HEAD", "/", "Ollama is running (headers only)", _TAG, open=True),
    Operation(
        "GET",
        "/api/version",
        "The Ollama API version served",
        _TAG,
        responses={
            "application/json": {"type": "object", "properties": {"version": {"type": "string"}}}
        },
    ),
    Operation(
        "GET",
        "/api/tags",
        "codex's models and the operator's aliases",
        _TAG,
        responses={
            "application/json": {
                "type": "object",
                "properties": {"models": {"type": "array", "items": _LISTED}},
            }
        },
    ),
    Operation(
        "POST",
        "/api/show",
        "A model's details and capabilities",
        _TAG,
        body=SHOW_BODY,
        responses={
            "application/json": {
                "type": "object",
                "properties": {
                    "modelfile": {"type": "string"},
                    "parameters": {"type": "string"},
                    "template": {"type": "string"},
                    "details": _DETAILS,
                    "model_info": {"type": "object"},
                    "capabilities": {"type": "array", "items": {"type": "string"}},
                    "modified_at": {"type": "string", "format": "date-time"},
                },
            }
        },
    ),
    Operation(
        "GET",
        "/api/ps",
        "Models ready to run",
        _TAG,
        description="codex's default model while a codex child is ready.",
        responses={
            "application/json": {
                "type": "object",
                "properties": {
                    "models": {
                        "type": "array",
                        "items": _with(
                            _LISTED,
                            expires_at={"type": "string", "format": "date-time"},
                            size_vram={"type": "integer"},
                        ),
                    }
                },
            }
        },
    ),
    Operation(
        "POST",
        "/api/chat",
        "A turn of a chat",
        _TAG,
        description=_NDJSON,
        body=CHAT_BODY,
        responses={
            "application/json": _with(
                _DONE,
                message={
                    "type": "object",
                    "properties": {
                        "role": {"const": "assistant"},
                        "content": {"type": "string"},
                        "thinking": {"type": "string"},
                        "tool_calls": {
                            "type": "array",
                            "description": "The client's functions the model calls (with "
                            "`tools`); the codex turn waits for their results.",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "function": {
                                        "type": "object",
                                        "properties": {
                                            "index": {"type": "integer"},
                                            "name": {"type": "string"},
                                            "arguments": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            )
        },
    ),
    Operation(
        "POST",
        "/api/generate",
        "One stateless turn",
        _TAG,
        description=_NDJSON,
        body=GENERATE_BODY,
        responses={
            "application/json": _with(
                _DONE, response={"type": "string"}, thinking={"type": "string"}
            )
        },
    ),
    *(
        Operation(
            method,
            path,
            "Not available: codex's models run remotely",
            _TAG,
            description='Answers 501 with {"error": "…"}.',
        )
        for method, path in REFUSED
    ),
)
