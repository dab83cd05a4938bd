"""A turn: the unit the supervisor hands to the HTTP front.

A :class:`Turn` is one codex turn on one thread of one child. It owns a
bounded channel of typed events (routed to it by ``threadId`` from the child's
reader) and guarantees exactly one terminal :class:`~supervisor.outcome.TurnEnded`
whatever happens: codex's own ``turn/completed``, the child dying, the
consumer falling too far behind, or a deadline. Its
:class:`~supervisor.outcome.TurnOutcome` says which.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable

import attrs
import trio

from bridge.messages import Notification
from bridge.protocol import (
    AgentMessageDelta,
    ItemCompleted,
    ItemStarted,
    OtherEvent,
    ReasoningDelta,
    TokenCounts,
    TokenUsageUpdated,
    TurnCompleted,
    TurnErrorEvent,
    TurnEvent,
    TurnStatus,
    parse_turn_event,
)

from .outcome import CodexError, FailureKind, TurnEnded, TurnOutcome

log = logging.getLogger(__name__)


class _Waiter:
    """Where a turn's one consumer waits for codex's next event: the
    consumer's task itself, woken by :meth:`wake`, instead of a new
    ``trio.Event`` for every wait (one per delta of a paced stream)."""

    __slots__ = ("_abort", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._abort = self._aborted  # made once, not at every wait

    def wake(self) -> None:
        """Wake the consumer if it waits (nothing to do otherwise: it looks
        at the turn's state before it waits)."""
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until :meth:`wake` (or cancellation)."""
        assert self._task is None, "a turn has one consumer"
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _aborted(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED


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
    #: Image files (absolute paths) sent with ``text`` as the turn's input.
    local_images: tuple[str, ...] = ()
    #: Images by URL (``https:`` or ``data:``) sent with ``text``.
    image_urls: tuple[str, ...] = ()
    #: A JSON Schema the answer must follow (structured output), this turn only.
    output_schema: dict[str, object] | None = None
    #: codex's approval policy for commands (None: the service's own).
    approval_policy: str | None = None
    #: Commands may only read, not write, the thread's directory.
    read_only: bool = False
    #: The client's functions, as codex dynamic tools (``{type: "function",
    #: name, description, inputSchema}``): given at ``thread/start`` only.
    tools: tuple[dict[str, object], ...] = ()


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


#: What a queued event other than a text delta is counted as, in bytes: a
#: parsed notification is a few small dicts (its text, if any, is added).
_EVENT_OVERHEAD_BYTES = 256
#: A merged run joins its parts every this many appends: memory stays close to
#: the text itself (one small str object per delta would cost ~50 bytes each).
_COMPACT_EVERY = 256


def _minus(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(
        max(0, a.total_tokens - b.total_tokens),
        max(0, a.input_tokens - b.input_tokens),
        max(0, a.cached_input_tokens - b.cached_input_tokens),
        max(0, a.output_tokens - b.output_tokens),
        max(0, a.reasoning_output_tokens - b.reasoning_output_tokens),
    )


def _event_bytes(event: TurnEvent) -> int:
    """The memory a queued event is accounted for (see ``max_buffered_bytes``)."""
    if isinstance(event, AgentMessageDelta | ReasoningDelta):
        return len(event.delta)
    if isinstance(event, OtherEvent):
        delta = event.params.get("delta")
        if isinstance(delta, str):
            return _EVENT_OVERHEAD_BYTES + len(delta)
    return _EVENT_OVERHEAD_BYTES


class _DeltaRun:
    """Consecutive text deltas of one item, merged while the consumer lags.

    Parts are joined every ``_COMPACT_EVERY`` appends and once more when the
    run is handed out, so merging a long burst costs linear time and memory
    close to the text's own size.
    """

    __slots__ = ("first", "merged", "parts", "size")

    def __init__(self, first: AgentMessageDelta | ReasoningDelta) -> None:
        self.first = first
        self.parts = [first.delta]
        self.size = len(first.delta)
        self.merged = False

    def append(self, delta: str) -> None:
        parts = self.parts
        parts.append(delta)
        self.size += len(delta)
        self.merged = True
        if len(parts) >= _COMPACT_EVERY:
            self.parts = ["".join(parts)]

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
        # Not "one part": after a compaction the one part is the whole run.
        if not self.merged:
            return self.first
        return attrs.evolve(self.first, delta="".join(self.parts))


def _no_tool_calls(call_id: str, text: str, *, success: bool = True) -> bool:
    return False


class Turn:
    """Events of one running turn, in order, ending with one TurnEnded.

    Created by the multiplexer; consumers use :meth:`next_event` (or async
    iteration) and never see anything after the terminal event. Leaving the
    multiplexer's ``open_turn`` context interrupts a turn codex has not
    finished.

    Slow consumers: the child's reader must never wait for one turn's
    consumer (it serves every thread of the child), so events are queued.
    Past ``coalesce_after`` queued events, new text deltas are merged into
    the queued run of the same item — the client gets the same text in
    fewer, larger chunks, and memory stays proportional to the text not yet
    sent. Past ``buffer_size`` queued events that cannot be merged, or past
    ``max_buffered_bytes`` of queued text (whatever the client does, a
    turn's backlog never grows beyond it), the turn is failed as too slow.

    Deadlines: the turn fails when codex sends nothing for
    ``idle_timeout_s`` (measured from codex's last event, however often the
    consumer comes back to wait), when it runs longer than
    ``turn_timeout_s``, or when codex only keeps retrying an unreachable
    model for ``retry_timeout_s``.
    """

    def __init__(
        self,
        *,
        thread_id: str,
        child_name: str,
        model: str,
        buffer_size: int,
        max_buffered_bytes: int = 4 * 1024 * 1024,
        idle_timeout_s: float = math.inf,
        turn_timeout_s: float = math.inf,
        retry_timeout_s: float = math.inf,
        usage_baseline: TokenCounts | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.child_name = child_name
        self.model = model
        self.turn_id = ""
        self._queue: collections.deque[TurnEvent | _DeltaRun] = collections.deque()
        self._wakeup = _Waiter()
        self.buffer_size = buffer_size
        self.coalesce_after = max(1, buffer_size // 8)
        self.max_buffered_bytes = max_buffered_bytes
        self._queued_bytes = 0
        self.idle_timeout_s = idle_timeout_s
        self.deadline = trio.current_time() + turn_timeout_s
        #: When codex last said something about this turn (the idle timer).
        self._last_activity = trio.current_time()
        # codex retries an unreachable model forever (``error`` with
        # willRetry every few seconds, never turn/completed): progress is
        # anything else, and a turn without it for retry_timeout_s fails.
        self.retry_timeout_s = retry_timeout_s
        self._last_progress = trio.current_time()
        self._last_retry: TurnErrorEvent | None = None
        self.outcome: TurnOutcome | None = None
        self._delivered_terminal = False
        #: codex's last error that it did not retry (its turn/completed may
        #: say less).
        self._last_error: TurnErrorEvent | None = None
        self._codex_finished = trio.Event()
        #: The thread's token total before this turn, when known (a fresh
        #: thread: zero). codex reports running totals of the whole thread.
        self.usage_baseline = usage_baseline
        self._first_usage: TokenUsageUpdated | None = None
        #: The thread's latest total — also from reports that come after the
        #: bridge ended the turn (codex counts a cut call when interrupted).
        self.thread_total: TokenCounts | None = None
        #: Called once, when the bridge fails the turn (see :meth:`fail`).
        self.on_failure: Callable[[FailureKind], None] | None = None
        #: Gives codex the client's result of a function call (call id, text,
        #: success); False if no such call waits.
        self.answer_tool_call: Callable[..., bool] = _no_tool_calls
        #: Commands of this turn still running (item id → command line):
        #: codex leaves them running when a turn is interrupted.
        self.running_commands: dict[str, str] = {}
        # Timings (trio clock), for operators: set by the multiplexer, then here.
        #: Waiting for a child with room for the turn.
        self.queue_wait_s = 0.0
        #: Waiting for codex to set the turn up (thread/start or resume, turn/start).
        self.setup_s = 0.0
        #: The consumer waiting for codex's next event (time codex, not the
        #: bridge, was working).
        self.waited_s = 0.0
        self.started_at = trio.current_time()
        #: The first text or reasoning delta, and the end of the turn.
        self.first_output_at: float | None = None
        self.ended_at: float | None = None

    # -- producer side (reader task of the child) -------------------------------

    def resumed(self) -> None:
        """The client answered its function calls: the idle timer restarts
        (codex said nothing while it waited for them)."""
        self._last_activity = trio.current_time()

    def on_notification(self, notification: Notification) -> None:
        """Route sink for this turn's thread; never blocks."""
        method = notification.method
        if method in _IGNORED_METHODS:
            return
        event = parse_turn_event(notification)
        if isinstance(event, TurnCompleted):
            if self.turn_id and event.turn_id and event.turn_id != self.turn_id:
                return  # a previous turn of this thread, not ours
            self._codex_finished.set()
            if self.outcome is None:
                self._finish(self._codex_outcome(event))
            return
        if isinstance(event, ItemStarted | ItemCompleted) and event.item_type == "commandExecution":
            self._track_command(event)
        if isinstance(event, TokenUsageUpdated):
            self._count(event)
        if self.outcome is not None:
            return
        self._last_activity = trio.current_time()
        if self.first_output_at is None and isinstance(event, AgentMessageDelta | ReasoningDelta):
            self.first_output_at = self._last_activity
        if isinstance(event, TurnErrorEvent) and not event.will_retry:
            self._last_error = event
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

    def _codex_outcome(self, event: TurnCompleted) -> TurnOutcome:
        """The outcome codex reported; its error detail may have come before,
        in an ``error`` notification it did not retry."""
        last = self._last_error
        message = event.error_message or (last.message if last is not None else None)
        info = event.codex_error_info
        if info is None and last is not None:
            info = last.codex_error_info
        error = None
        if event.status is TurnStatus.FAILED or info is not None:
            error = CodexError(message or "the turn failed", info)
        return TurnOutcome(event.status, None, message, error)

    @property
    def failure_kind(self) -> FailureKind | None:
        """Why the supervisor ended the turn (None: codex did, or not yet)."""
        return self.outcome.failure if self.outcome is not None else None

    def _count(self, event: TokenUsageUpdated) -> None:
        if self._first_usage is None:
            self._first_usage = event
        self.thread_total = event.total

    @property
    def usage(self) -> TokenCounts:
        """Tokens this turn used: the thread's total now minus before the turn.

        Without a known baseline (a thread resumed after a restart) the total
        before the turn is taken as the first report's total minus that
        call's own share, which is exact unless the turn was cut before any
        model call completed (codex then repeats the previous call's report).
        """
        first, total = self._first_usage, self.thread_total
        if first is None or total is None:
            return TokenCounts()
        before = self.usage_baseline
        if before is None:
            before = _minus(first.total, first.last)
        return _minus(total, before)

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
        size = _event_bytes(event)
        if self._queued_bytes + size > self.max_buffered_bytes and queue:
            self._too_slow(f"more than {self.max_buffered_bytes} bytes waited for it")
            return
        if len(queue) >= self.coalesce_after and isinstance(
            event, AgentMessageDelta | ReasoningDelta
        ):
            tail = queue[-1]
            if isinstance(tail, _DeltaRun) and tail.accepts(event):
                tail.append(event.delta)
                self._queued_bytes += size
                return
            queue.append(_DeltaRun(event))
        elif len(queue) >= self.buffer_size:
            self._too_slow(f"more than {self.buffer_size} events waited for it")
            return
        else:
            queue.append(event)
        self._queued_bytes += size
        self._wakeup.wake()

    def _too_slow(self, detail: str) -> None:
        self.fail(
            FailureKind.CONSUMER_TOO_SLOW,
            f"the client read the stream too slowly ({detail}); the turn was stopped",
        )

    def fail(self, kind: FailureKind, message: str) -> None:
        """End the turn from the bridge's side (idempotent); ``on_failure``
        hears of it (the multiplexer stops codex without waiting for a
        consumer that may be stuck)."""
        if self.outcome is None:
            self._finish(TurnOutcome(TurnStatus.FAILED, kind, message))
            if self.on_failure is not None:
                self.on_failure(kind)

    def _finish(self, outcome: TurnOutcome) -> None:
        # The outcome is kept apart from the queue, so it can never be lost
        # to a full buffer; the consumer gets it after what was queued.
        self.outcome = outcome
        self.ended_at = trio.current_time()
        self._wakeup.wake()

    async def wait_codex_finished(self) -> None:
        """Return once codex itself reported the turn over."""
        await self._codex_finished.wait()

    def wait_codex_finished_nowait(self) -> bool:
        return self._codex_finished.is_set()

    # -- consumer side -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def pending(self) -> int:
        """Queued events not yet taken by the consumer."""
        return len(self._queue)

    @property
    def buffered_bytes(self) -> int:
        """What the queued events are accounted for (see ``max_buffered_bytes``)."""
        return self._queued_bytes

    def _pop(self) -> TurnEvent:
        item = self._queue.popleft()
        if isinstance(item, _DeltaRun):
            self._queued_bytes -= item.size
            return item.event()
        self._queued_bytes -= _event_bytes(item)
        return item

    def next_events_nowait(self, limit: int) -> list[TurnEvent]:
        """Up to ``limit`` already-queued events, without waiting.

        Lets a consumer batch a burst of deltas into one write. Never returns
        :class:`TurnEnded` (:meth:`next_event` does).
        """
        queue = self._queue
        pop = self._pop
        return [pop() for _ in range(min(limit, len(queue)))]

    async def next_event(self) -> TurnEvent | TurnEnded | None:
        """The next event; :class:`TurnEnded` last; then ``None``.

        Enforces the idle and overall deadlines: when one passes, the turn is
        failed and its terminal event returned (the multiplexer interrupts
        codex when the turn's context exits unfinished by codex).
        """
        if self._delivered_terminal:
            return None
        while not self._queue and self.outcome is None:
            idle_deadline = self._last_activity + self.idle_timeout_s
            waiting_since = trio.current_time()
            with trio.move_on_at(min(idle_deadline, self.deadline, self._retry_deadline())):
                await self._wakeup.wait()
                self.waited_s += trio.current_time() - waiting_since
                continue
            now = trio.current_time()
            self.waited_s += now - waiting_since
            if now >= self.deadline:
                self.fail(FailureKind.TURN_TIMEOUT, "the turn took longer than allowed")
            elif now >= self._retry_deadline():
                self._fail_retrying()
            elif now >= self._last_activity + self.idle_timeout_s:
                self.fail(
                    FailureKind.IDLE_TIMEOUT,
                    f"codex sent nothing for {self.idle_timeout_s:g}s; the turn was stopped",
                )
        if self._queue:
            return self._pop()
        self._delivered_terminal = True
        assert self.outcome is not None
        return TurnEnded(self.outcome)

    async def quiet_for(self, seconds: float) -> bool:
        """Whether codex says nothing more for ``seconds`` (True), or something
        came (False; it is then next). For a step's function calls: each
        arrives on its own, so the last one is known only by the quiet after."""
        with trio.move_on_after(seconds):
            while not self._queue and self.outcome is None:
                await self._wakeup.wait()
            return False
        return True

    def __aiter__(self) -> Turn:
        return self

    async def __anext__(self) -> TurnEvent | TurnEnded:
        event = await self.next_event()
        if event is None:
            raise StopAsyncIteration
        return event
