"""``/v1/responses``: the OpenAI Responses API door.

``POST`` parses and checks the request, finds the chain it continues
(``previous_response_id``), runs the turn (:func:`http_front.turns.run_attempts`)
and writes the answer as an event stream (through the response owner) or
whole; ``GET`` and ``DELETE /v1/responses/{id}`` read and forget a stored
response.

A chain of responses is one codex thread in one workspace directory. A
response continuing the thread's last turn runs on that thread with only its
new input; one continuing an earlier response (a branch), or a thread codex
can no longer resume, runs on a fresh thread seeded with the chain's stored
history. Turns of one thread run one at a time.

When the model calls the client's functions, the response ends (completed)
with the step's ``function_call`` items while the codex turn waits, parked
(:mod:`http_front.tool_park`); the request bringing their
``function_call_output`` items — with ``previous_response_id`` or the whole
history — resumes that turn and is answered with the rest of it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from bridge.protocol import TurnEvent
from supervisor import Turn, TurnEnded, TurnRequest

from .. import telemetry
from ..chat.request import parse_body
from ..conversation.identity import workspace_name
from ..conversation.store import ConversationStore, MemoryStore, ResponseRecord
from ..door import Door
from ..errors import ApiError, bad_request
from ..images import write as write_images
from ..models import model_turn
from ..render import TurnRenderer
from ..response import SSE_KEEPALIVE, EventStream, Exchange, open_event_stream
from ..schema import JsonSchema, Operation
from ..tool_park import Held, ToolPark
from ..turns import Attempt, Consume, calls_complete, ending, run_attempts
from .encode import EventEncoder, ResponseHead, ResponsePresenter, new_id
from .request import BODY, ResponsesRequest, call_text, dynamic_tools, parse_responses_request

#: Events rendered into one write at most; bounds a write's size and latency.
_BATCH = 512
#: How far back a chain's history is collected for a fresh thread.
_MAX_CHAIN = 1000

PREFIX = "/v1/responses/"


def _not_found(response_id: str, param: str | None = None) -> ApiError:
    if param == "previous_response_id":
        return ApiError(
            404,
            f"Previous response with id '{response_id}' not found.",
            param=param,
            code="previous_response_not_found",
        )
    return ApiError(404, f"No response found with id '{response_id}'.", code="not_found")


@attrs.frozen
class _Chain:
    """Where a request's turn runs, and what it continues."""

    candidates: tuple[TurnRequest, ...]
    chain: str | None  # None: a one-off (store=false, nothing continued)
    cwd: Path
    instructions: str | None


def _calls_of(record: ResponseRecord) -> list[str]:
    """The call ids of the function calls a stored response ended with."""
    output = (record.response or {}).get("output") or ()
    return [item["call_id"] for item in output if item.get("type") == "function_call"]


def _thread_tools(record: ResponseRecord) -> tuple[dict[str, object], ...]:
    """The client's functions the stored response's thread offers the model."""
    response = record.response or {}
    return dynamic_tools(response.get("tools"), response.get("tool_choice"))


class Responses(Door):
    def _prepare(self) -> None:
        self._memory: MemoryStore | None = None

    @property
    def store(self) -> ConversationStore:
        if self.conversations.store is not None:
            return self.conversations.store
        if self._memory is None:
            self._memory = MemoryStore()
        return self._memory

    # -- GET / DELETE ------------------------------------------------------------------

    def _id_of(self, exchange: Exchange) -> str:
        response_id = exchange.path[len(PREFIX) :].rstrip("/")
        if not response_id or "/" in response_id:
            raise ApiError(404, f"no such endpoint: {exchange.path}", code="unknown_url")
        return response_id

    async def get(self, exchange: Exchange) -> None:
        response_id = self._id_of(exchange)
        record = await self.store.get_response(response_id)
        if record is None or record.response is None:
            raise _not_found(response_id)
        await exchange.answer_json(200, record.response)

    async def delete(self, exchange: Exchange) -> None:
        response_id = self._id_of(exchange)
        if not await self.store.delete_response(response_id):
            raise _not_found(response_id)
        await exchange.answer_json(
            200, {"id": response_id, "object": "response.deleted", "deleted": True}
        )

    # -- POST --------------------------------------------------------------------------

    async def create(self, exchange: Exchange) -> None:
        exchange.require_json()
        park = self.client_tools
        request = parse_responses_request(
            parse_body(await exchange.read_body(self.limits)),
            self.options.images,
            default_effort=self.options.default_reasoning_effort,
            summary=self.options.reasoning_summary,
            client_tools=park is not None,
        )
        turn = await model_turn(self.supervisor, self.options.aliases, request.model, request.turn)
        request = attrs.evolve(request, turn=turn)
        previous: ResponseRecord | None = None
        if request.previous_response_id is not None:
            previous = await self.store.get_response(request.previous_response_id)
            if previous is None:
                raise _not_found(request.previous_response_id, "previous_response_id")
            _check_results(request, previous)
        response_id = new_id("resp")
        chain_id = previous.chain if previous is not None else response_id
        record = telemetry.current()
        if record is not None:
            record.model = request.model
            record.conversation = telemetry.conversation_hash(chain_id)
        uses_park = bool(request.turn.tools or request.tool_results)
        answer = _Answer(
            self, exchange, request, previous, response_id, park if uses_park else None
        )
        lock = None if previous is None else "responses:" + previous.thread_id
        async with exchange.cancelled_on_disconnect():
            try:
                async with self.conversations.one_at_a_time(lock):
                    if request.tool_results and answer.park is not None:
                        await self._resume(answer, answer.park)
                        return
                    chain = await self._chain(request, previous, chain_id)
                    lives_on = False
                    try:
                        lives_on = await (answer.stream if request.stream else answer.whole)(chain)
                    finally:
                        if chain.chain is None and not lives_on:  # else the park removes it
                            await self.conversations.scratch.give_back(chain.cwd)
            except ApiError as exc:  # raised before any response was started
                await exchange.answer_error(exc)

    async def _resume(self, answer: _Answer, park: ToolPark) -> None:
        """The request brings the results of the model's calls: the turn
        waiting on them goes on, and its rest is this request's answer."""
        request = answer.request
        async with park.resume(request.tool_results, "input") as held:
            answer.resuming = held
            # The chain the turn runs in (a turn another door parked goes on
            # too, and nothing of it is stored here).
            chain = held.context if isinstance(held.context, _Chain) else None
            await (answer.stream if request.stream else answer.whole)(chain)

    async def _chain(
        self, request: ResponsesRequest, previous: ResponseRecord | None, chain_id: str
    ) -> _Chain:
        turn = request.turn
        root = Path(self.conversations.workspace_root)
        if previous is None and not request.store:
            # Nothing will be kept: a directory of its own, removed afterwards.
            cwd = self.conversations.scratch.take()
            chain: str | None = None
        else:
            cwd = root / "responses" / workspace_name(chain_id)
            chain = chain_id
            # Local, as a conversation's: a worker thread's round trip would
            # cost more than the call, on the first byte of every response.
            cwd.mkdir(parents=True, exist_ok=True)
        paths, urls = await write_images(request.images, str(cwd))
        turn = attrs.evolve(
            turn, cwd=str(cwd), local_images=paths, image_urls=urls, ephemeral=chain is None
        )
        if previous is None:
            return _Chain((turn,), chain, cwd, turn.developer_instructions)
        instructions = turn.developer_instructions or previous.instructions
        candidates: list[TurnRequest] = []
        head = await self.store.get_thread_head(previous.thread_id)
        # A thread offers the model the functions it started with.
        if head == previous.turn_id and _thread_tools(previous) == turn.tools:
            # The thread's last turn: go on with only the new input (and
            # instructions the thread was not started with, as a developer message).
            added: tuple[dict[str, object], ...] = ()
            if turn.developer_instructions and turn.developer_instructions != previous.instructions:
                added = (
                    {
                        "type": "message",
                        "role": "developer",
                        "content": [{"type": "input_text", "text": turn.developer_instructions}],
                    },
                )
            candidates.append(
                attrs.evolve(
                    turn,
                    thread_id=previous.thread_id,
                    developer_instructions=None,
                    history=added + turn.history,
                )
            )
        history = await self._chain_history(previous)
        if history is not None:
            candidates.append(
                attrs.evolve(
                    turn, developer_instructions=instructions, history=history + turn.history
                )
            )
        if not candidates:
            raise ApiError(
                409,
                f"response '{request.previous_response_id}' is not the last of its thread, and "
                "the earlier responses of its chain are no longer stored: its conversation "
                "cannot be rebuilt; start a new one",
                param="previous_response_id",
                code="previous_response_unavailable",
            )
        return _Chain(tuple(candidates), chain, cwd, instructions)

    async def _chain_history(self, last: ResponseRecord) -> tuple[dict[str, object], ...] | None:
        """Every stored item of the chain up to ``last``; None if a link is gone."""
        records = [last]
        while records[-1].previous is not None and len(records) < _MAX_CHAIN:
            earlier = await self.store.get_response(records[-1].previous)
            if earlier is None:
                return None
            records.append(earlier)
        return tuple(item for record in reversed(records) for item in record.items)

    async def remember(
        self,
        request: ResponsesRequest,
        previous: ResponseRecord | None,
        chain: _Chain,
        response_id: str,
        turn: Turn | None,
        final: dict[str, Any],
        answer: str,
    ) -> None:
        """Keep the response (if asked) and its thread's last turn. Shielded
        and bounded: the server reports a finished exchange as a disconnect."""
        if turn is None or not turn.turn_id or chain.chain is None:
            return
        with trio.move_on_after(10, shield=True):
            await self.store.put_thread_head(turn.thread_id, turn.turn_id)
            if not request.store:
                return
            reply: tuple[dict[str, Any], ...] = ()
            if answer:
                reply = (
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": answer}],
                    },
                )
            await self.store.put_response(
                response_id,
                ResponseRecord(
                    thread_id=turn.thread_id,
                    turn_id=turn.turn_id,
                    chain=chain.chain,
                    previous=request.previous_response_id,
                    instructions=chain.instructions,
                    items=request.items + reply,
                    response=final,
                ),
            )


@attrs.define
class _Answer:
    """One request's answer, streamed or whole."""

    door: Responses
    exchange: Exchange
    request: ResponsesRequest
    previous: ResponseRecord | None
    response_id: str
    #: Where the turn waits on the client's function calls (None: no tools).
    park: ToolPark | None = None
    #: The parked turn the request resumes, if it brings function results.
    resuming: Held | None = None
    created_at: int = attrs.Factory(lambda: int(time.time()))

    def _presenter(self, turn: Turn) -> ResponsePresenter:
        head = ResponseHead(
            self.response_id,
            self.created_at,
            self.request.model or turn.model,
            self.request.echo,
            self.request.previous_response_id,
        )
        return ResponsePresenter(head)

    async def _run(self, chain: _Chain | None, consume: Consume) -> Attempt:
        """Run the chain's turn through ``consume`` (or go on with a resumed
        one); a turn that may call the client's functions is opened in the
        park, where it can outlive this request."""
        resuming = self.resuming
        park = self.park
        if resuming is not None:
            assert park is not None
            # Parked again (if it calls again) before the answer's last bytes
            # go out, so the client's next request finds it parked.
            async with park.leaving(resuming):
                await consume(resuming.turn)
            return Attempt(resuming.turn, 0)
        assert chain is not None
        if park is None:
            return await run_attempts(self.door.supervisor, chain.candidates, consume)

        def opener(request: TurnRequest) -> AbstractAsyncContextManager[Turn]:
            return park.open_turn(request, chain)

        return await run_attempts(self.door.supervisor, chain.candidates, consume, opener)

    def _wait_for_calls(
        self, chain: _Chain | None, turn: Turn, presenter: ResponsePresenter
    ) -> bool:
        """Whether the response ends with the client's function calls: then
        the turn waits for their results, parked (a one-off's directory
        removed once it is let go)."""
        if not presenter.calls or turn.outcome is not None or self.park is None:
            return False
        cleanup: Callable[[], Awaitable[None]] | None = None
        if chain is not None and chain.chain is None and self.resuming is None:
            cleanup = partial(self.door.conversations.scratch.give_back, chain.cwd)
        self.park.wait_for(turn, presenter.calls, cleanup)
        return True

    async def _finish(
        self, chain: _Chain | None, attempt: Attempt, presenter: ResponsePresenter, calls: bool
    ) -> list[dict[str, Any]]:
        events = presenter.finish(ending(attempt, calls=calls), int(time.time()))
        if chain is not None:
            await self.door.remember(
                self.request,
                self.previous,
                chain,
                self.response_id,
                attempt.turn,
                presenter.final,
                _reply_text(presenter),
            )
        return events

    async def stream(self, chain: _Chain | None) -> bool:
        """Stream the turn (or the rest of the one resumed). True if it
        lives on, waiting on the client's function calls."""
        encoder = EventEncoder()
        presenter: ResponsePresenter | None = None
        keepalive = self.door.options.keepalive_interval_s
        calls = False
        async with open_event_stream(self.exchange, keepalive_s=keepalive) as out:

            async def consume(turn: Turn) -> bool:
                nonlocal presenter, calls
                started = presenter is not None
                presenter = self._presenter(turn)  # a new attempt starts from nothing
                if not started:
                    # A keepalive comment first: headers and first bytes reach
                    # the client at once, whatever buffers sit between.
                    await out.start(SSE_KEEPALIVE + encoder.encode_all(presenter.start()))
                await _pump(turn, TurnRenderer(), presenter, encoder, out)
                calls = self._wait_for_calls(chain, turn, presenter)
                return presenter.shown > 0

            attempt = await self._run(chain, consume)
            if presenter is None:  # refused before anything was sent
                end = ending(attempt)
                assert end.error is not None
                await self.exchange.answer_error(end.error)
                return False
            events = await self._finish(chain, attempt, presenter, calls)
            await out.finish(encoder.encode_all(events))
        return calls

    async def whole(self, chain: _Chain | None) -> bool:
        presenter: ResponsePresenter | None = None
        calls = False

        async def consume(turn: Turn) -> bool:
            nonlocal presenter, calls
            presenter = self._presenter(turn)  # a new attempt starts from nothing
            renderer = TurnRenderer()
            while (event := await _next_event(turn, renderer)) is not None:
                for piece in renderer.feed(event):
                    presenter.present(piece)
            calls = self._wait_for_calls(chain, turn, presenter)
            return presenter.shown > 0

        attempt = await self._run(chain, consume)
        end = ending(attempt, calls=calls)
        if presenter is None:
            assert end.error is not None
            await self.exchange.answer_error(end.error)
            return False
        await self._finish(chain, attempt, presenter, calls)
        if end.error is not None:
            await self.exchange.answer_error(end.error)
            return False
        await self.exchange.answer_json(200, presenter.final)
        return calls


def _reply_text(presenter: ResponsePresenter) -> str:
    """The answer as the chain's history replays it: its text, then its
    function calls."""
    calls = [
        call_text(item["name"], item["arguments"])
        for item in presenter.output
        if item["type"] == "function_call"
    ]
    return "\n".join(filter(None, [presenter.answer_text(), *calls]))


def _check_results(request: ResponsesRequest, previous: ResponseRecord) -> None:
    """A response that ended with function calls goes on with their
    outputs, and only theirs (as OpenAI's API has it)."""
    calls = _calls_of(previous)
    for call in calls:
        if call not in request.tool_results:
            raise bad_request(f"No tool output found for function call {call}.", param="input")
    for call in request.tool_results:
        if call not in calls:
            raise bad_request(
                f"No tool call found for function call output with call_id {call}.",
                param="input",
            )


async def _pump(
    turn: Turn,
    renderer: TurnRenderer,
    presenter: ResponsePresenter,
    encoder: EventEncoder,
    out: EventStream,
) -> None:
    """Render the turn's events to SSE frames until its end, or until the
    model's calls of the client's functions are all in."""
    feed = renderer.feed
    present = presenter.present
    encode = encoder.encode
    while True:
        event = await _next_event(turn, renderer)
        if event is None:
            return
        frames: list[bytes] = []
        for one in (event, *turn.next_events_nowait(_BATCH)):
            for piece in feed(one):
                for item in present(piece):
                    frames.append(encode(item))
        if frames:
            await out.send(b"".join(frames))
        if isinstance(event, TurnEnded):
            return


async def _next_event(turn: Turn, renderer: TurnRenderer) -> TurnEvent | TurnEnded | None:
    """The turn's next event; None after its end, or once the model's calls
    of the client's functions are in: codex asks for each call as soon as the
    model has written it, so a moment's quiet is what says no other call of
    the step follows (then the turn waits for their results)."""
    if renderer.calls_in and await calls_complete(turn):
        return None
    return await turn.next_event()


def _response_schema() -> JsonSchema:
    return {
        "title": "Response",
        "type": "object",
        "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "created_at": {"type": "integer"},
            "completed_at": {"type": ["integer", "null"]},
            "status": {"enum": ["in_progress", "completed", "incomplete", "failed"]},
            "error": {
                "type": ["object", "null"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "incomplete_details": {"type": ["object", "null"]},
            "model": {"type": "string"},
            "output": {
                "type": "array",
                "description": "message, reasoning, shell_call, shell_call_output, "
                "apply_patch_call, apply_patch_call_output, mcp_call and web_search_call items; "
                "function_call items (call_id, name, arguments) when the model calls the "
                "client's functions",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
                },
            },
            "previous_response_id": {"type": ["string", "null"]},
            "instructions": {"type": ["string", "null"]},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "usage": {
                "type": ["object", "null"],
                "properties": {
                    "input_tokens": {"type": "integer"},
                    "input_tokens_details": {
                        "type": "object",
                        "properties": {"cached_tokens": {"type": "integer"}},
                    },
                    "output_tokens": {"type": "integer"},
                    "output_tokens_details": {
                        "type": "object",
                        "properties": {"reasoning_tokens": {"type": "integer"}},
                    },
                    "total_tokens": {"type": "integer"},
                },
            },
            "store": {"type": "boolean"},
        },
    }


_RESPONSE = _response_schema()

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/v1/responses",
        "Create a response",
        "Responses",
        description="Runs one codex turn. With stream: true, server-sent events "
        "(response.created … response.completed / incomplete / failed, each with a "
        "sequence_number); else the response object. previous_response_id continues "
        "the same codex thread. Function tools are offered to the model; its calls end "
        "the response (completed) with function_call items while the codex turn waits, "
        "and the request bringing their function_call_output items (after "
        "previous_response_id or in the client's own history) is answered with the rest "
        "of that turn.",
        body=BODY,
        responses={"application/json": _RESPONSE, "text/event-stream": {"type": "string"}},
    ),
    Operation(
        "GET",
        "/v1/responses/{response_id}",
        "Retrieve a stored response",
        "Responses",
        responses={"application/json": _RESPONSE},
        parameters={"response_id": "The response's id (resp_…)."},
    ),
    Operation(
        "DELETE",
        "/v1/responses/{response_id}",
        "Delete a stored response",
        "Responses",
        description="It can no longer be retrieved nor continued.",
        responses={
            "application/json": {
                "type": "object",
                "required": ["id", "object", "deleted"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "response.deleted"},
                    "deleted": {"const": True},
                },
            }
        },
        parameters={"response_id": "The response's id (resp_…)."},
    ),
)
