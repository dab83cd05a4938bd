"""Turns parked on the client's function calls.

When the model calls one of the client's functions (a codex dynamic tool),
the HTTP answer ends the way its API ends a tool call, but the codex turn
does not end: it waits, parked here, for the client's next request to bring
the results. That request finds the turn by the call ids (so it works with or
without a conversation key), answers codex, and streams the rest of the same
turn.

A turn that may park is held by a task of the park's own (not the request's)
so it outlives the request that started it. It is released — the turn
interrupted if still running, the child's capacity freed — when a request
that consumed it leaves without parking it (it ended, or its client went
away), or when nobody brings the results within ``timeout_s`` (codex gets
failed results first).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import attrs
import trio

from supervisor import Supervisor, Turn, TurnRequest

from . import telemetry
from .errors import ApiError, bad_request

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Held:
    """A turn held open by the park, and what its requests need to know."""

    turn: Turn
    released: trio.Event = attrs.Factory(trio.Event)
    #: The calls it waits on (while parked).
    calls: tuple[str, ...] = ()
    #: Set when a request takes the parked turn.
    taken: trio.Event = attrs.Factory(trio.Event)
    #: What the conversation needs to remember the turn once it completes.
    context: Any = None
    #: Runs once the turn is let go (e.g. removing its scratch directory).
    cleanup: Callable[[], Awaitable[None]] | None = None
    #: The API key (its name) of the request that started the turn: only
    #: requests with the same key may resume it.
    owner: str | None = None
    #: A request is consuming it inside :meth:`ToolPark.leaving`.
    entered: bool = False


class ToolPark:
    def __init__(self, supervisor: Supervisor, *, timeout_s: float = 300.0) -> None:
        self.supervisor = supervisor
        self.timeout_s = timeout_s
        self._nursery: trio.Nursery | None = None
        self._parked: dict[str, Held] = {}
        self._waiting: dict[Turn, tuple[str, ...]] = {}
        self._cleanups: dict[Turn, Callable[[], Awaitable[None]]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold turns until cancelled (the service's lifetime)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def parked(self) -> int:
        """Turns waiting for a client's results."""
        return len({id(held) for held in self._parked.values()})

    # -- starting and leaving a turn ----------------------------------------------

    @contextlib.asynccontextmanager
    async def open_turn(self, request: TurnRequest, context: Any = None) -> AsyncIterator[Turn]:
        """Like :meth:`Supervisor.open_turn`, but the turn outlives the
        request when it is left waiting on the client's calls
        (:meth:`wait_for`)."""
        if self._nursery is None:
            raise RuntimeError("the tool park is not running")
        held: Held = await self._nursery.start(self._hold, request)
        held.context = context
        held.owner = _key_name()
        async with self.leaving(held):
            yield held.turn

    @contextlib.asynccontextmanager
    async def leaving(self, held: Held) -> AsyncIterator[None]:
        """Park the turn on leaving if the request said it waits on calls;
        release it otherwise (an error or a client gone included)."""
        held.entered = True
        ok = False
        try:
            yield
            ok = True
        finally:
            self._leave(held, ok=ok)

    def _leave(self, held: Held, *, ok: bool) -> None:
        calls = self._waiting.pop(held.turn, ())
        # Whether parked or let go, the turn's holder cleans up after it.
        held.cleanup = held.cleanup or self._cleanups.pop(held.turn, None)
        if ok and calls and held.turn.outcome is None:
            record = telemetry.current()
            if record is not None:
                record.tool_calls = len(calls)
            self._park(held, calls)
        else:
            held.released.set()

    def wait_for(
        self,
        turn: Turn,
        calls: Collection[str],
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """The turn waits on these calls: park it when its request leaves;
        ``cleanup`` runs once the turn is let go."""
        self._waiting[turn] = tuple(calls)
        if cleanup is not None:
            self._cleanups[turn] = cleanup

    async def _hold(self, request: TurnRequest, *, task_status: trio.TaskStatus[Held]) -> None:
        held: Held | None = None
        try:
            async with self.supervisor.open_turn(request) as turn:
                held = Held(turn)
                task_status.started(held)
                await held.released.wait()
        except Exception:
            if held is None:
                raise  # a refusal: the request hears it from start()
            log.exception("leaving a held turn failed")
        if held is not None and held.cleanup is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await held.cleanup()

    # -- parking and taking --------------------------------------------------------

    def _park(self, held: Held, calls: tuple[str, ...]) -> None:
        assert self._nursery is not None
        held.calls = calls
        held.taken = trio.Event()
        for call in calls:
            self._parked[call] = held
        self._nursery.start_soon(self._expire, held, held.taken)

    async def _expire(self, held: Held, taken: trio.Event) -> None:
        with trio.move_on_after(self.timeout_s):
            await taken.wait()
            return
        if held.taken is not taken:
            return  # taken and parked again since
        log.warning(
            "%s: no result for %s within %gs; the turn is ended",
            held.turn.thread_id,
            ", ".join(held.calls),
            self.timeout_s,
        )
        for call in held.calls:
            self._parked.pop(call, None)
            held.turn.answer_tool_call(
                call,
                f"The client sent no result for this call within {self.timeout_s:g} seconds.",
                success=False,
            )
        held.released.set()

    def take(self, calls: Collection[str], param: str = "messages") -> Held:
        """The parked turn waiting on exactly these calls, now the caller's.

        An unknown call id, calls of different turns, or only some of a
        turn's calls: 400, and a parked turn stays parked.
        """
        owner = _key_name()
        found: dict[str, Held | None] = {}
        for call in calls:
            held = self._parked.get(call)
            # Another key's turn is no business of this request's.
            found[call] = held if held is not None and held.owner == owner else None
        unknown = sorted(call for call, held in found.items() if held is None)
        if unknown:
            raise bad_request(
                f"no pending function call has the id(s) {', '.join(unknown)}: the call ended "
                "(its turn finished or waited too long for the result), or never existed",
                param=param,
                code="unknown_tool_call",
            )
        helds = {id(held): held for held in found.values() if held is not None}
        if len(helds) != 1:
            raise bad_request(
                "these function results answer calls of different turns; answer one turn's "
                "calls per request",
                param=param,
                code="tool_call_mismatch",
            )
        (held,) = helds.values()
        missing = sorted(set(held.calls) - set(calls))
        if missing:
            raise ApiError(
                400,
                f"the model called {len(held.calls)} functions; the results of "
                f"{', '.join(missing)} are missing. Send every call's result in one request.",
                param=param,
                code="tool_results_missing",
            )
        for call in held.calls:
            del self._parked[call]
        held.taken.set()
        return held

    @contextlib.asynccontextmanager
    async def resume(self, results: dict[str, str], param: str = "messages") -> AsyncIterator[Held]:
        """Take the turn waiting on these results and give them to codex.

        The caller consumes the rest of the turn inside :meth:`leaving`
        (so that it is parked again, if it calls again, as soon as it stops
        — before the answer is written, which a fast client may beat);
        otherwise leaving this context does the same.
        """
        held = self.take(results.keys(), param)
        held.entered = False
        record = telemetry.current()
        if record is not None:  # its log lines and metrics are this turn's
            record.ran(held.turn)
        ok = False
        try:
            for call in held.calls:
                held.turn.answer_tool_call(call, results[call], success=True)
            held.calls = ()
            held.turn.resumed()
            yield held
            ok = True
        finally:
            if not held.entered:
                self._leave(held, ok=ok)


def _key_name() -> str | None:
    """The API key (its name) the current request came with."""
    record = telemetry.current()
    return record.key if record is not None else None
