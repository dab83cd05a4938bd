"""A turn: the unit the supervisor hands to the HTTP front.

A :class:`Turn` is one codex turn on one thread of one child. It owns a
bounded channel of typed events (routed to it by ``threadId`` from the child's
reader) and guarantees exactly one terminal :class:`~bridge.protocol.TurnCompleted`
whatever happens: codex's own ``turn/completed``, the child dying, the
consumer falling too far behind, or a deadline.
"""

from __future__ import annotations

import enum
import logging
import math

import attrs
import trio

from bridge.messages import Notification
from bridge.protocol import (
    TURN_EVENT_PARSERS,
    OtherEvent,
    TurnCompleted,
    TurnEvent,
    TurnStatus,
)

log = logging.getLogger(__name__)


class FailureKind(enum.StrEnum):
    """Why the bridge (not codex) ended a turn."""

    CHILD_EXITED = "child_exited"
    IDLE_TIMEOUT = "idle_timeout"
    TURN_TIMEOUT = "turn_timeout"
    CONSUMER_TOO_SLOW = "consumer_too_slow"
    CANCELLED = "cancelled"


@attrs.frozen
class TurnRequest:
    """What the HTTP front asks for: run ``text`` as a new turn.

    ``history`` holds raw Responses-API items replayed into the fresh thread
    before the turn (``thread/inject_items``).
    """

    text: str
    model: str | None = None
    developer_instructions: str | None = None
    history: tuple[dict[str, object], ...] = ()
    effort: str | None = None
    summary: str | None = None


# Notifications that carry a threadId but mean nothing to a turn's consumer;
# dropping them at the sink keeps the channel for events that matter.
_IGNORED_METHODS = frozenset(
    {
        "thread/status/changed",
        "thread/readState/changed",
        "thread/started",
        "account/rateLimits/updated",
        "serverRequest/resolved",
    }
)


class Turn:
    """Events of one running turn, in order, ending with one TurnCompleted.

    Created by the multiplexer; consumers use :meth:`next_event` (or async
    iteration) and never see anything after the terminal event. ``interrupt``
    is requested through :attr:`interrupt_requested`, which the multiplexer
    acts on.
    """

    def __init__(
        self,
        *,
        thread_id: str,
        child_name: str,
        model: str,
        buffer_size: int,
        idle_timeout_s: float = math.inf,
        turn_timeout_s: float = math.inf,
    ) -> None:
        self.thread_id = thread_id
        self.child_name = child_name
        self.model = model
        self.turn_id = ""
        self._send, self._receive = trio.open_memory_channel[TurnEvent](buffer_size)
        self.idle_timeout_s = idle_timeout_s
        self.deadline = trio.current_time() + turn_timeout_s
        self.terminal: TurnCompleted | None = None
        self._delivered_terminal = False
        self.failure_kind: FailureKind | None = None
        self._codex_finished = trio.Event()

    # -- producer side (reader task of the child) -------------------------------

    def on_notification(self, notification: Notification) -> None:
        """Route sink for this turn's thread; never blocks."""
        method = notification.method
        if method in _IGNORED_METHODS:
            return
        parser = TURN_EVENT_PARSERS.get(method)
        event = (
            parser(notification.params)
            if parser is not None
            else OtherEvent(method, notification.params)
        )
        if isinstance(event, TurnCompleted):
            if self.turn_id and event.turn_id and event.turn_id != self.turn_id:
                return  # a previous turn of this thread, not ours
            self._codex_finished.set()
            if self.terminal is None:
                self._finish(event)
            return
        if self.terminal is not None:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.fail(
                FailureKind.CONSUMER_TOO_SLOW,
                "the client read the stream too slowly; the turn was stopped",
            )

    async def wait_codex_finished(self) -> None:
        """Return once codex itself reported the turn over."""
        await self._codex_finished.wait()

    def fail(self, kind: FailureKind, message: str) -> None:
        """End the turn from the bridge's side (idempotent)."""
        if self.terminal is None:
            self.failure_kind = kind
            self._finish(TurnCompleted(self.turn_id, TurnStatus.FAILED, message, kind.value))

    def _finish(self, event: TurnCompleted) -> None:
        self.terminal = event
        # The terminal event is delivered out of band (not through the
        # bounded channel), so it can never be lost to a full buffer; the
        # consumer sees it after draining what was queued before it.
        self._send.close()

    # -- consumer side -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    def next_events_nowait(self, limit: int) -> list[TurnEvent]:
        """Up to ``limit`` already-queued events, without waiting.

        Lets a consumer batch a burst of deltas into one write.
        """
        events: list[TurnEvent] = []
        receive_nowait = self._receive.receive_nowait
        try:
            while len(events) < limit:
                events.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        return events

    async def next_event(self) -> TurnEvent | None:
        """The next event; the terminal event last; then ``None``.

        Enforces the idle and overall deadlines: when one passes, the turn is
        failed and its terminal event returned (the multiplexer interrupts
        codex when the turn's context exits unfinished by codex).
        """
        if self._delivered_terminal:
            return None
        timeout = min(self.idle_timeout_s, self.deadline - trio.current_time())
        with trio.move_on_after(max(timeout, 0)):
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                pass
        if self.terminal is None:
            if trio.current_time() >= self.deadline:
                self.fail(FailureKind.TURN_TIMEOUT, "the turn took longer than allowed")
            else:
                self.fail(
                    FailureKind.IDLE_TIMEOUT,
                    f"codex sent nothing for {self.idle_timeout_s:g}s; the turn was stopped",
                )
        self._delivered_terminal = True
        assert self.terminal is not None
        return self.terminal

    def __aiter__(self) -> Turn:
        return self

    async def __anext__(self) -> TurnEvent:
        event = await self.next_event()
        if event is None:
            raise StopAsyncIteration
        return event
