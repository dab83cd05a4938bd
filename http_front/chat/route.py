"""``POST /v1/chat/completions``: the chat completions front door.

Parse and check the request, find its conversation, run the turn
(:mod:`http_front.turns`), and write the answer: as a chunk stream through
the response owner (:mod:`http_front.response`), or whole.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import attrs

from supervisor import Supervisor, Turn, TurnEnded

from .. import telemetry
from ..conversation.manager import Conversations, Plan
from ..errors import ApiError
from ..models import check_model
from ..options import FrontOptions
from ..render import TurnRenderer
from ..response import SSE_KEEPALIVE, BodyLimits, EventStream, Exchange, open_event_stream
from ..turns import Answer, answer_of, converse, ending, run_attempts
from .present import ChatOptions, ChatPresenter
from .request import ChatRequest, parse_body, parse_chat_request
from .stream import DONE, ChunkEncoder
from .whole import WholeCompletion

#: Events rendered into one write at most; bounds a write's size and latency.
_BATCH = 512


class ChatCompletions:
    def __init__(
        self,
        supervisor: Supervisor,
        conversations: Conversations,
        options: FrontOptions,
        limits: BodyLimits,
    ) -> None:
        self.supervisor = supervisor
        self.conversations = conversations
        self.options = options
        self.limits = limits

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
        )
        if chat.model is not None:
            await check_model(self.supervisor, chat.model)
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
        )
        # A client that goes away cancels everything below — also while it
        # waits for its conversation's previous turn — and the turn is then
        # interrupted on its way out.
        async with exchange.cancelled_on_disconnect():
            respond = answer.stream if chat.stream else answer.whole
            try:
                await converse(self.conversations, kind, key, chat, respond)
            except ApiError as exc:  # raised before any response was started
                await exchange.answer_error(exc)


@attrs.define
class _Answer:
    """One request's answer, streamed or whole."""

    supervisor: Supervisor
    exchange: Exchange
    chat: ChatRequest
    options: ChatOptions
    keepalive_s: float
    completion_id: str = attrs.Factory(lambda: "chatcmpl-" + uuid.uuid4().hex)

    def _model(self, turn: Turn | None) -> str:
        return self.chat.model or (turn.model if turn is not None else "")

    async def stream(self, plan: Plan, remember: Callable[[Answer], None]) -> None:
        """Stream the turn; ``remember`` hears the answer before the last
        bytes go out (the server reports a finished response as a disconnect)."""
        encoder: ChunkEncoder | None = None
        presenter = ChatPresenter(self.options)
        async with open_event_stream(self.exchange, keepalive_s=self.keepalive_s) as out:

            async def consume(turn: Turn) -> bool:
                nonlocal encoder, presenter
                presenter = ChatPresenter(self.options)  # a new attempt starts from nothing
                if encoder is None:
                    encoder = ChunkEncoder(self.completion_id, int(time.time()), self._model(turn))
                    # A keepalive comment first: headers and first bytes reach the
                    # client at once, whatever buffers sit between.
                    await out.start(SSE_KEEPALIVE + encoder.role())
                await _pump(turn, TurnRenderer(), presenter, encoder, out)
                return presenter.shown > 0

            attempt = await run_attempts(self.supervisor, plan.requests, consume)
            end = ending(attempt)
            if encoder is None:  # refused before anything was sent
                assert end.error is not None
                await self.exchange.answer_error(end.error)
                return
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

    async def whole(self, plan: Plan, remember: Callable[[Answer], None]) -> None:
        completion = WholeCompletion()

        async def consume(turn: Turn) -> bool:
            nonlocal completion
            completion = WholeCompletion()  # a new attempt starts from nothing
            presenter = ChatPresenter(self.options)
            renderer = TurnRenderer()
            async for event in turn:
                for piece in renderer.feed(event):
                    for delta in presenter.present(piece):
                        completion.add(delta)
            return presenter.shown > 0

        attempt = await run_attempts(self.supervisor, plan.requests, consume)
        end = ending(attempt)
        if end.error is not None:
            await self.exchange.answer_error(end.error)
            return
        answer = answer_of(attempt, completion.content)
        assert answer is not None
        remember(answer)
        body = completion.body(
            self.completion_id,
            int(time.time()),
            self._model(attempt.turn),
            end.finish_reason,
            end.usage,
        )
        await self.exchange.answer_json(200, body)


async def _pump(
    turn: Turn,
    renderer: TurnRenderer,
    presenter: ChatPresenter,
    encoder: ChunkEncoder,
    out: EventStream,
) -> None:
    """Render the turn's events to chunks until its end."""
    feed = renderer.feed
    present = presenter.present
    encode = encoder.delta
    while True:
        event = await turn.next_event()
        if event is None:
            return
        frames: list[bytes] = []
        for one in (event, *turn.next_events_nowait(_BATCH)):
            for piece in feed(one):
                for delta in present(piece):
                    frames.append(encode(delta))
        if frames:
            await out.send(b"".join(frames))
        if isinstance(event, TurnEnded):
            return
