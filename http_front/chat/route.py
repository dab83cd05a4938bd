"""``POST /v1/chat/completions``: the chat completions front door.

Parse and check the request, find its conversation, run the turn
(:mod:`http_front.turns`), and write the answer: as a chunk stream through
the response owner (:mod:`http_front.response`), or whole. Stop sequences
are the bridge's own (:mod:`http_front.stop`): at the first one the answer
ends, the turn is left (which interrupts it in codex), and the answer
finishes as ``stop``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial

import attrs

from supervisor import Supervisor, Turn, TurnEnded

from .. import telemetry
from ..conversation.manager import Conversations, Plan
from ..door import Door
from ..errors import ApiError
from ..models import model_turn
from ..pieces import Piece
from ..render import TurnRenderer
from ..response import SSE_KEEPALIVE, EventStream, Exchange, open_event_stream
from ..schema import Operation
from ..stop import StopFilter
from ..tool_park import Held, ToolPark
from ..turns import (
    Answer,
    Attempt,
    Consume,
    answer_of,
    calls_complete,
    converse,
    ending,
    go_on,
    run_turn,
)
from .present import ChatOptions, ChatPresenter
from .request import CHAT_BODY, ChatRequest, parse_body, parse_chat_request
from .stream import DONE, ChunkEncoder
from .whole import WholeCompletion

#: Events rendered into one write at most; bounds a write's size and latency.
_BATCH = 512


class ChatCompletions(Door):
    def _chat_options(self, exchange: Exchange, *, stream: bool) -> ChatOptions:
        options = self.options
        status = stream and (
            options.status_events == "always"
            or (
                options.status_events == "auto"
                and exchange.header(b"x-openwebui-chat-id") is not None
            )
        )
        return ChatOptions(
            reasoning=options.reasoning_format,
            status_events=status,  # for live streams only
            command_output_lines=options.command_output_lines,
        )

    async def __call__(self, exchange: Exchange) -> None:
        exchange.require_json()
        body = parse_body(await exchange.read_body(self.limits))
        chat = parse_chat_request(
            body,
            default_effort=self.options.default_reasoning_effort,
            summary=self.options.reasoning_summary,
            images=self.options.images,
            client_tools=self.client_tools is not None,
        )
        turn = await model_turn(self.supervisor, self.options.aliases, chat.model, chat.turn)
        chat = attrs.evolve(chat, turn=turn)
        kind, key = self.conversations.classify(exchange.headers, body)
        record = telemetry.current()
        if record is not None:
            record.model = chat.model
            record.conversation = None if key is None else telemetry.conversation_hash(key)
        answer = _Answer(
            self.supervisor,
            exchange,
            chat,
            self._chat_options(exchange, stream=chat.stream),
            self.options.keepalive_interval_s,
            self.client_tools if chat.turn.tools or chat.tool_results else None,
            self.conversations,
        )
        # A client that goes away cancels everything below — also while it
        # waits for its conversation's previous turn — and the turn is then
        # interrupted on its way out.
        async with exchange.cancelled_on_disconnect():
            respond = answer.stream if chat.stream else answer.whole
            try:
                if chat.tool_results and answer.park is not None:
                    await self._resume(answer, key)
                else:
                    await converse(self.conversations, kind, key, chat, respond)
            except ApiError as exc:  # raised before any response was started
                await exchange.answer_error(exc)

    async def _resume(self, answer: _Answer, key: str | None) -> None:
        """The request brings the results of the model's calls: the turn
        waiting on them goes on, and its rest is this request's answer."""
        assert answer.park is not None
        chat = answer.chat
        async with (
            self.conversations.one_at_a_time(key),
            answer.park.resume(chat.tool_results) as held,
        ):
            await go_on(
                self.conversations, held, chat, answer.stream if chat.stream else answer.whole
            )


@attrs.define
class _Answer:
    """One request's answer, streamed or whole."""

    supervisor: Supervisor
    exchange: Exchange
    chat: ChatRequest
    options: ChatOptions
    keepalive_s: float
    #: Where the turn waits on the client's function calls (None: no tools).
    park: ToolPark | None = None
    conversations: Conversations | None = None
    completion_id: str = attrs.Factory(lambda: "chatcmpl-" + uuid.uuid4().hex)

    async def _run(self, plan: Plan, consume: Consume, resumed: Held | None) -> Attempt:
        return await run_turn(self.supervisor, self.park, plan, consume, resumed)

    def _wait_for_calls(self, plan: Plan, turn: Turn, presenter: ChatPresenter) -> bool:
        """Whether the answer ends with the client's function calls: then
        the turn waits for their results, parked."""
        if not presenter.calls or turn.outcome is not None or self.park is None:
            return False
        conversations = self.conversations
        cleanup = None if conversations is None else partial(conversations.finish, plan)
        self.park.wait_for(turn, [call.call_id for call in presenter.calls], cleanup)
        return True

    def _model(self, turn: Turn | None) -> str:
        return self.chat.model or (turn.model if turn is not None else "")

    async def stream(
        self, plan: Plan, remember: Callable[[Answer], None], resumed: Held | None = None
    ) -> bool:
        """Stream the turn; ``remember`` hears the answer before the last
        bytes go out (the server reports a finished response as a disconnect).
        True if the turn lives on, waiting on the client's function calls."""
        encoder: ChunkEncoder | None = None
        presenter = ChatPresenter(self.options)
        stop = self._stop()
        calls = False
        async with open_event_stream(self.exchange, keepalive_s=self.keepalive_s) as out:

            async def consume(turn: Turn) -> bool:
                nonlocal encoder, presenter, stop, calls
                # A new attempt starts from nothing.
                presenter, stop = ChatPresenter(self.options), self._stop()
                if encoder is None:
                    encoder = ChunkEncoder(self.completion_id, int(time.time()), self._model(turn))
                    # A keepalive comment first: headers and first bytes reach the
                    # client at once, whatever buffers sit between.
                    await out.start(SSE_KEEPALIVE + encoder.role())
                await _pump(turn, TurnRenderer(), presenter, encoder, out, stop)
                calls = self._wait_for_calls(plan, turn, presenter)
                return presenter.shown > 0

            attempt = await self._run(plan, consume, resumed)
            end = ending(attempt, stopped=stop is not None and stop.stopped, calls=calls)
            if encoder is None:  # refused before anything was sent
                assert end.error is not None
                await self.exchange.answer_error(end.error)
                return False
            tail: list[bytes] = []
            if end.error is not None:
                tail.append(encoder.error(end.error))
            tail.append(encoder.finish(end.finish_reason))
            if self.chat.include_usage:
                tail.append(encoder.usage(end.usage))
            tail.append(DONE)
            answer = answer_of(attempt, presenter.content())
            if answer is not None:
                remember(answer)
            await out.finish(b"".join(tail))
        return calls

    def _stop(self) -> StopFilter | None:
        return StopFilter(self.chat.stop) if self.chat.stop else None

    async def whole(
        self, plan: Plan, remember: Callable[[Answer], None], resumed: Held | None = None
    ) -> bool:
        completion = WholeCompletion()
        stop = self._stop()
        calls = False

        async def consume(turn: Turn) -> bool:
            nonlocal completion, stop, calls
            # A new attempt starts from nothing.
            completion, stop = WholeCompletion(), self._stop()
            presenter = ChatPresenter(self.options)
            renderer = TurnRenderer()
            async for event in turn:
                for piece in _stopped(renderer.feed(event), stop):
                    for delta in presenter.present(piece):
                        completion.add(delta)
                if stop is not None and stop.stopped:
                    break  # leaving the turn interrupts it
                if renderer.calls_in and await calls_complete(turn):
                    break  # every call of this step is in: the turn waits
            else:
                for piece in stop.end() if stop is not None else ():
                    for delta in presenter.present(piece):
                        completion.add(delta)
            calls = self._wait_for_calls(plan, turn, presenter)
            return presenter.shown > 0

        attempt = await self._run(plan, consume, resumed)
        end = ending(attempt, stopped=stop is not None and stop.stopped, calls=calls)
        if end.error is not None:
            await self.exchange.answer_error(end.error)
            return False
        answer = answer_of(attempt, completion.content)
        if answer is not None:  # (a turn ended at a stop sequence is not kept)
            remember(answer)
        body = completion.body(
            self.completion_id,
            int(time.time()),
            self._model(attempt.turn),
            end.finish_reason,
            end.usage,
        )
        await self.exchange.answer_json(200, body)
        return calls


async def _pump(
    turn: Turn,
    renderer: TurnRenderer,
    presenter: ChatPresenter,
    encoder: ChunkEncoder,
    out: EventStream,
    stop: StopFilter | None = None,
) -> None:
    """Render the turn's events to chunks until its end, or its first stop
    sequence."""
    feed = renderer.feed
    present = presenter.present
    encode = encoder.delta
    while True:
        event = await turn.next_event()
        frames: list[bytes] = []
        if event is not None:
            for one in (event, *turn.next_events_nowait(_BATCH)):
                for piece in feed(one) if stop is None else _stopped(feed(one), stop):
                    for delta in present(piece):
                        frames.append(encode(delta))
        ended = event is None or isinstance(event, TurnEnded)
        if stop is not None and ended:
            frames += [encode(delta) for piece in stop.end() for delta in present(piece)]
        if frames:
            await out.send(b"".join(frames))
        if ended or (stop is not None and stop.stopped):
            return  # (leaving a turn at a stop sequence interrupts it)
        if renderer.calls_in and await calls_complete(turn):
            return  # every call of this step is in: the turn waits for results


def _stopped(pieces: list[Piece], stop: StopFilter | None) -> list[Piece]:
    """``pieces`` through the stop sequences, if any."""
    if stop is None:
        return pieces
    return [out for piece in pieces for out in stop.feed(piece)]


_INT = {"type": "integer"}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": _INT,
        "completion_tokens": _INT,
        "total_tokens": _INT,
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": _INT}},
        "completion_tokens_details": {
            "type": "object",
            "properties": {"reasoning_tokens": _INT},
        },
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": _INT,
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": _INT,
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": "string"},
                            "reasoning_content": {"type": "string"},
                        },
                    },
                    "finish_reason": {"enum": ["stop", "length"]},
                },
            },
        },
        "usage": _USAGE,
    },
}

OPERATIONS = (
    Operation(
        "POST",
        "/v1/chat/completions",
        "Chat completions (OpenAI): one codex turn",
        "OpenAI",
        description=(
            "The last user message (with its images) is the turn's input; earlier messages are "
            "the conversation's history, continued on its codex thread when the conversation "
            "is known. With stream: true the answer is a text/event-stream of "
            "chat.completion.chunk objects (data: {...} frames): the role first, then content "
            "and reasoning_content deltas, OpenWebUI status events where enabled, an error "
            "chunk if the turn fails after it started, a chunk with finish_reason (stop or "
            "length), a usage chunk when stream_options.include_usage is set, and data: "
            "[DONE]; comment frames keep an idle stream alive."
        ),
        body=CHAT_BODY,
        responses={"application/json": _COMPLETION},
    ),
)
