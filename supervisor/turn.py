"""A turn: the unit the supervisor hands to the HTTP front.

A :class:`Turn` is one codex turn on one thread of one child. It owns a
bounded channel of typed events (routed to it by ``threadId`` from the child's
reader) and guarantees exactly one terminal :class:`~bridge.protocol.TurnCompleted`
whatever happens: codex's own ``turn/completed``, the child dying, the
consumer falling too far behind, or a deadline.
"""

from __future__ import annotations

import collections
import enum
import logging
import math

import attrs
import trio

from bridge.messages import Notification
from bridge.protocol import (
    TURN_EVENT_PARSERS,
    AgentMessageDelta,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TurnCompleted,
    TurnErrorEvent,
    TurnEvent,
    TurnStatus,
)

log = logging.getLogger(__name__)


class FailureKind(enum.StrEnum):
    """Why the bridge (not codex) ended a turn."""

    CHILD_EXITED = "child_exited"
    IDLE_TIMEOUT = "idle_timeout"
    TURN_TIMEOUT = "turn_timeout"
    RETRY_TIMEOUT = "retry_timeout"
    CONSUMER_TOO_SLOW = "consumer_too_slow"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


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
    #: Continue this thread (its owner child, or resumed elsewhere) instead
    #: of starting a fresh one.
    thread_id: str | None = None
    #: A fresh thread that codex does not persist.
    ephemeral: bool = True
    cwd: str | None = None
    #: Roll the thread back first: this turn of it and all later ones go.
    revert_before_turn: str | None = None


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


class _DeltaRun:
    """Consecutive text deltas of one item, merged while the consumer lags.

    Parts are joined once, when the run is handed out, so merging a long
    burst costs linear, not quadratic, time.
    """

    __slots__ = ("first", "parts")

    def __init__(self, first: AgentMessageDelta | ReasoningDelta) -> None:
        self.first = first
        self.parts = [first.delta]

    def accepts(self, event: TurnEvent) -> bool:
        first = self.first
        if type(event) is not type(first):
            return False
        if isinstance(event, ReasoningDelta):
            assert isinstance(first, ReasoningDelta)
            if (event.index, event.raw) != (first.index, first.raw):
                return False
        return event.item_id == first.item_id

    def event(self) -> TurnEvent:
        if len(self.parts) == 1:
            return self.first
        return attrs.evolve(self.first, delta="".join(self.parts))


class Turn:
    """Events of one running turn, in order, ending with one TurnCompleted.

    Created by the multiplexer; consumers use :meth:`next_event` (or async
    iteration) and never see anything after the terminal event. Leaving the
    multiplexer's ``open_turn`` context interrupts a turn codex has not
    finished.

    Slow consumers: the child's reader must never wait for one turn's
    consumer (it serves every thread of the child), so events are queued.
    Past ``coalesce_after`` queued events, new text deltas are merged into
    the queued run of the same item — the client gets the same text in
    fewer, larger chunks, and memory stays proportional to the text not yet
    sent. Past ``buffer_size`` queued events that cannot be merged, the turn
    is failed as too slow.
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
        retry_timeout_s: float = math.inf,
    ) -> None:
        self.thread_id = thread_id
        self.child_name = child_name
        self.model = model
        self.turn_id = ""
        self._queue: collections.deque[TurnEvent | _DeltaRun] = collections.deque()
        self._wakeup = trio.Event()
        self.buffer_size = buffer_size
        self.coalesce_after = max(1, buffer_size // 8)
        self.idle_timeout_s = idle_timeout_s
        self.deadline = trio.current_time() + turn_timeout_s
        # codex retries an unreachable model forever (``error`` with
        # willRetry every few seconds, never turn/completed): progress is
        # anything else, and a turn without it for retry_timeout_s fails.
        self.retry_timeout_s = retry_timeout_s
        self._last_progress = trio.current_time()
        self._last_retry: TurnErrorEvent | None = None
        self.terminal: TurnCompleted | None = None
        self._delivered_terminal = False
        self.failure_kind: FailureKind | None = None
        self._codex_finished = trio.Event()
        #: Commands of this turn still running (item id → command line):
        #: codex leaves them running when a turn is interrupted.
        self.running_commands: dict[str, str] = {}

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
        if isinstance(event, ItemStarted | ItemCompleted) and event.item_type == "commandExecution":
            self._track_command(event)
        if self.terminal is not None:
            return
        if isinstance(event, TurnErrorEvent) and event.will_retry:
            self._last_retry = event
            if trio.current_time() >= self._retry_deadline():
                self._push(event)
                self._fail_retrying()
                return
        else:
            self._last_progress = trio.current_time()
            self._last_retry = None
        self._push(event)

    def _track_command(self, event: ItemStarted | ItemCompleted) -> None:
        item_id = str(event.item.get("id"))
        if isinstance(event, ItemCompleted):
            self.running_commands.pop(item_id, None)
            return
        command = event.item.get("command")
        if isinstance(command, str):
            self.running_commands[item_id] = command

    def _retry_deadline(self) -> float:
        if self._last_retry is None:
            return math.inf
        return self._last_progress + self.retry_timeout_s

    def _fail_retrying(self) -> None:
        retry = self._last_retry
        assert retry is not None
        detail = f" ({retry.additional_details})" if retry.additional_details else ""
        self.fail(
            FailureKind.RETRY_TIMEOUT,
            f"the model could not be reached for {self.retry_timeout_s:g}s; "
            f"codex kept retrying: {retry.message}{detail}",
        )

    def _push(self, event: TurnEvent) -> None:
        queue = self._queue
        if len(queue) >= self.coalesce_after and isinstance(
            event, AgentMessageDelta | ReasoningDelta
        ):
            tail = queue[-1]
            if isinstance(tail, _DeltaRun) and tail.accepts(event):
                tail.parts.append(event.delta)
                return
            queue.append(_DeltaRun(event))
        elif len(queue) >= self.buffer_size:
            self.fail(
                FailureKind.CONSUMER_TOO_SLOW,
                "the client read the stream too slowly; the turn was stopped",
            )
            return
        else:
            queue.append(event)
        self._wakeup.set()

    def fail(self, kind: FailureKind, message: str) -> None:
        """End the turn from the bridge's side (idempotent)."""
        if self.terminal is None:
            self.failure_kind = kind
            self._finish(TurnCompleted(self.turn_id, TurnStatus.FAILED, message, kind.value))

    def _finish(self, event: TurnCompleted) -> None:
        # The terminal event is kept apart from the queue, so it can never be
        # lost to a full buffer; the consumer gets it after what was queued.
        self.terminal = event
        self._wakeup.set()

    async def wait_codex_finished(self) -> None:
        """Return once codex itself reported the turn over."""
        await self._codex_finished.wait()

    def wait_codex_finished_nowait(self) -> bool:
        return self._codex_finished.is_set()

    # -- consumer side -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    @property
    def pending(self) -> int:
        """Queued events not yet taken by the consumer."""
        return len(self._queue)

    def _pop(self) -> TurnEvent:
        item = self._queue.popleft()
        return item.event() if isinstance(item, _DeltaRun) else item

    def next_events_nowait(self, limit: int) -> list[TurnEvent]:
        """Up to ``limit`` already-queued events, without waiting.

        Lets a consumer batch a burst of deltas into one write. Never returns
        the terminal event (:meth:`next_event` does).
        """
        queue = self._queue
        pop = self._pop
        return [pop() for _ in range(min(limit, len(queue)))]

    async def next_event(self) -> TurnEvent | None:
        """The next event; the terminal event last; then ``None``.

        Enforces the idle and overall deadlines: when one passes, the turn is
        failed and its terminal event returned (the multiplexer interrupts
        codex when the turn's context exits unfinished by codex).
        """
        if self._delivered_terminal:
            return None
        while not self._queue and self.terminal is None:
            self._wakeup = trio.Event()
            now = trio.current_time()
            with trio.move_on_at(
                min(now + self.idle_timeout_s, self.deadline, self._retry_deadline())
            ):
                await self._wakeup.wait()
                continue
            now = trio.current_time()
            if now >= self.deadline:
                self.fail(FailureKind.TURN_TIMEOUT, "the turn took longer than allowed")
            elif now >= self._retry_deadline():
                self._fail_retrying()
            else:
                self.fail(
                    FailureKind.IDLE_TIMEOUT,
                    f"codex sent nothing for {self.idle_timeout_s:g}s; the turn was stopped",
                )
        if self._queue:
            return self._pop()
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
