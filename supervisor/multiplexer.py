"""Turn multiplexer: from a turn request to a running turn on some child.

It picks the least busy usable child, bounds concurrency per child, queues
callers fairly (FIFO) up to a bound and a deadline, starts a fresh thread,
replays history into it, starts the turn and routes the thread's
notifications to the :class:`~supervisor.turn.Turn`. Leaving the turn's
context before codex finished it (client gone, error, cancellation) sends
``turn/interrupt`` and waits, bounded, for codex to confirm.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from bridge.peer import PeerClosed, RpcCallError
from bridge.protocol import (
    InjectItemsParams,
    ModelInfo,
    TextInput,
    ThreadStartParams,
    TurnInterruptParams,
    TurnStartParams,
)

from .child import Child
from .pool import Pool
from .turn import FailureKind, Turn, TurnRequest

log = logging.getLogger(__name__)


class TurnRefused(Exception):
    """No turn was started; nothing reached codex's model.

    ``status`` is the HTTP status the front should answer with.
    """

    status = 503
    code = "service_unavailable"
    retry_after_s: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Overloaded(TurnRefused):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoChildAvailable(TurnRefused):
    code = "no_codex_available"


class NotAuthenticated(TurnRefused):
    code = "codex_not_authenticated"


class CodexRejected(TurnRefused):
    """codex answered a request of the turn's setup with an error."""

    status = 502
    code = "codex_error"


class TurnMultiplexer:
    """Hands out turns on the children of ``pool``.

    Limits: ``max_turns_per_child`` running turns per child; beyond that up
    to ``queue_size`` callers wait, first come first served, for at most
    ``queue_timeout_s``; past either bound :class:`Overloaded` is raised
    (HTTP 429 with Retry-After).
    """

    def __init__(
        self,
        pool: Pool,
        *,
        max_turns_per_child: int = 16,
        queue_size: int = 64,
        queue_timeout_s: float = 30.0,
        rpc_timeout_s: float = 30.0,
        interrupt_grace_s: float = 5.0,
        turn_event_buffer: int = 8192,
        turn_idle_timeout_s: float = math.inf,
        turn_timeout_s: float = math.inf,
        turn_retry_timeout_s: float = math.inf,
        workspace_dir: str | None = None,
        default_model: str | None = None,
    ) -> None:
        self.pool = pool
        self.max_turns_per_child = max_turns_per_child
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.turn_event_buffer = turn_event_buffer
        self.turn_idle_timeout_s = turn_idle_timeout_s
        self.turn_timeout_s = turn_timeout_s
        self.turn_retry_timeout_s = turn_retry_timeout_s
        self.workspace_dir = workspace_dir
        self.default_model = default_model
        self._waiters: collections.deque[object] = collections.deque()
        self._load: dict[Child, int] = {}
        self._models: list[ModelInfo] | None = None
        self._models_at = -math.inf

    # -- admission -----------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def load(self, child: Child) -> int:
        return self._load.get(child, 0)

    def _pick(self) -> Child | None:
        best: Child | None = None
        for child in self.pool.usable_children:
            load = self._load.get(child, 0)
            if load < self.max_turns_per_child and (best is None or load < self._load.get(best, 0)):
                best = child
        return best

    async def _acquire(self) -> Child:
        child = self._pick() if not self._waiters else None
        if child is not None:
            self._load[child] = self._load.get(child, 0) + 1
            return child
        if len(self._waiters) >= self.queue_size:
            raise Overloaded(
                "all codex workers are busy and the queue is full; retry shortly",
                retry_after_s=1.0,
            )
        ticket = object()
        self._waiters.append(ticket)
        try:
            with trio.move_on_after(self.queue_timeout_s):
                while True:
                    if self._waiters[0] is ticket:
                        child = self._pick()
                        if child is not None:
                            self._load[child] = self._load.get(child, 0) + 1
                            return child
                    await self.pool.wait_changed()
        finally:
            self._waiters.remove(ticket)
            # The next in line may be able to go now.
            self.pool.notify_load_changed()
        if not self.pool.live:
            raise NoChildAvailable(self.pool.unavailable_reason())
        raise Overloaded(
            f"all codex workers stayed busy for {self.queue_timeout_s:g}s; retry shortly",
            retry_after_s=max(1.0, self.queue_timeout_s / 10),
        )

    def _release(self, child: Child) -> None:
        load = self._load.get(child, 0) - 1
        if load <= 0:
            self._load.pop(child, None)
        else:
            self._load[child] = load
        self.pool.notify_load_changed()

    # -- models ----------------------------------------------------------------

    async def models(self, *, max_age_s: float = 60.0) -> list[ModelInfo]:
        """codex's model catalog (``model/list``), cached for ``max_age_s``."""
        if self._models is not None and trio.current_time() - self._models_at < max_age_s:
            return self._models
        children = self.pool.usable_children
        if not children:
            if self._models is not None:
                return self._models
            raise NoChildAvailable(self.pool.unavailable_reason())
        try:
            models = await children[0].client.model_list(timeout_s=self.rpc_timeout_s)
        except (PeerClosed, RpcCallError, trio.TooSlowError) as exc:
            if self._models is not None:
                return self._models
            raise NoChildAvailable(f"cannot list codex models: {exc}") from exc
        self._models = models
        self._models_at = trio.current_time()
        return models

    # -- turns -------------------------------------------------------------------

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[Turn]:
        """Start a turn and yield it; interrupt it if left unfinished.

        Raises a :class:`TurnRefused` subclass when no turn could be started
        (nothing was sent to the model). A child that dies while the turn is
        being set up is replaced by another child once, transparently. On
        exit — normal, exception or cancellation — an unfinished turn is
        interrupted (bounded by ``interrupt_grace_s``, shielded) and its
        child slot released.
        """
        for attempt in (1, 2):
            child = await self._acquire()
            try:
                turn = await self._start(child, request)
            except PeerClosed as exc:
                self._release(child)
                if attempt == 2:
                    raise NoChildAvailable(f"codex app-server went away: {exc}") from exc
                log.warning("%s died while starting a turn; trying another child", child.name)
                continue
            except BaseException:
                self._release(child)
                raise
            break
        try:
            yield turn
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(child, turn)
                child.turns.discard(turn)
                child.client.peer.remove_route(turn.thread_id, turn.on_notification)
                child.turns_served += 1
                self._release(child)

    async def _start(self, child: Child, request: TurnRequest) -> Turn:
        if child.auth_problem is not None:
            try:
                problem = await child.check_auth()
            except (RpcCallError, trio.TooSlowError):
                problem = child.auth_problem
            if problem is not None:
                raise NotAuthenticated(problem)
        client = child.client
        timeout = self.rpc_timeout_s
        model = request.model or self.default_model
        try:
            started = await client.thread_start(
                ThreadStartParams(
                    model=model,
                    cwd=self.workspace_dir,
                    developer_instructions=request.developer_instructions,
                    ephemeral=True,
                ),
                timeout_s=timeout,
            )
        except RpcCallError as exc:
            raise CodexRejected(f"codex refused to start a thread: {exc.message}") from exc
        except trio.TooSlowError as exc:
            raise NoChildAvailable(f"{child.name} did not start a thread in {timeout:g}s") from exc
        thread_id = started.thread.id
        turn = Turn(
            thread_id=thread_id,
            child_name=child.name,
            model=started.model,
            buffer_size=self.turn_event_buffer,
            idle_timeout_s=self.turn_idle_timeout_s,
            turn_timeout_s=self.turn_timeout_s,
            retry_timeout_s=self.turn_retry_timeout_s,
        )
        # Route before turn/start: codex may emit events before answering.
        child.client.peer.add_route(thread_id, turn.on_notification)
        child.turns.add(turn)
        try:
            if request.history:
                await client.thread_inject_items(
                    InjectItemsParams(thread_id, [dict(item) for item in request.history]),
                    timeout_s=timeout,
                )
            result = await client.turn_start(
                TurnStartParams(
                    thread_id,
                    [TextInput(request.text)],
                    effort=request.effort,
                    summary=request.summary,
                ),
                timeout_s=timeout,
            )
        except BaseException as exc:
            child.turns.discard(turn)
            child.client.peer.remove_route(thread_id, turn.on_notification)
            if isinstance(exc, RpcCallError):
                raise CodexRejected(f"codex refused the turn: {exc.message}") from exc
            if isinstance(exc, trio.TooSlowError):
                raise NoChildAvailable(
                    f"{child.name} did not start the turn in {timeout:g}s"
                ) from exc
            raise
        turn.turn_id = result.turn.id
        return turn

    async def _finish(self, child: Child, turn: Turn) -> None:
        """Interrupt an unfinished turn and wait (bounded) for codex to end it."""
        if turn.finished and turn.failure_kind is None:
            return  # codex ended it
        if not child.usable or turn.failure_kind is FailureKind.CHILD_EXITED:
            turn.fail(FailureKind.CANCELLED, "the turn was abandoned")
            return
        with trio.move_on_after(self.interrupt_grace_s):
            try:
                await child.client.turn_interrupt(TurnInterruptParams(turn.thread_id, turn.turn_id))
                await turn.wait_codex_finished()
            except (PeerClosed, RpcCallError) as exc:
                log.info("%s: interrupt of %s: %s", child.name, turn.turn_id, exc)
        if not turn.finished:
            log.warning(
                "%s: turn %s did not end within %.1fs of its interrupt",
                child.name,
                turn.turn_id,
                self.interrupt_grace_s,
            )
        turn.fail(FailureKind.CANCELLED, "the turn was interrupted")
