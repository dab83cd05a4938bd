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
import contextlib
import logging
import math
import os
import shlex
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from bridge.messages import Notification
from bridge.peer import PeerClosed, RpcCallError
from bridge.protocol import (
    InjectItemsParams,
    ModelInfo,
    TextInput,
    ThreadResumeParams,
    ThreadRevertParams,
    ThreadStartParams,
    TokenCounts,
    TurnInterruptParams,
    TurnStartParams,
)

from .child import Child, ChildState
from .keyed_locks import KeyedLocks
from .pool import Pool
from .reaper import descendants, process_table
from .turn import FailureKind, Turn, TurnRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotAuthenticated(TurnRefused):
    code = "codex_not_authenticated"


class CodexRejected(TurnRefused):
    """codex answered a request of the turn's setup with an error."""

    status = 502
    code = "codex_error"


class InputTooLarge(TurnRefused):
    """codex refused the turn's input as too long (the front checks first;
    this is codex's own word on it)."""

    status = 400
    code = "string_above_max_length"


class ThreadUnavailable(TurnRefused):
    """The requested thread could not be resumed (codex does not know it)."""

    status = 409
    code = "thread_unavailable"


#: JSON-RPC error code codex uses when it is overloaded.
OVERLOADED = -32001


class TurnMultiplexer:
    """Hands out turns on the children of ``pool``.

    Limits: ``max_turns_per_child`` running turns per child; beyond that up
    to ``queue_size`` callers wait, first come first served, for at most
    ``queue_timeout_s``; past either bound :class:`Overloaded` is raised
    (HTTP 429 with Retry-After).

    Threads: a non-ephemeral thread is owned by the child that created or
    resumed it (codex refuses a second writer). Turns on it go to the owner;
    when the owner is gone the thread is resumed on another child; turns on
    one thread are serialized.
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
        stream_buffer_bytes: int = 4 * 1024 * 1024,
        turn_idle_timeout_s: float = math.inf,
        turn_timeout_s: float = math.inf,
        turn_retry_timeout_s: float = math.inf,
        overload_retries: int = 3,
        overload_backoff_s: float = 0.2,
        workspace_dir: str | None = None,
        default_model: str | None = None,
        thread_idle_release_s: float = 600.0,
        max_threads_per_child: int = 128,
    ) -> None:
        self.pool = pool
        self.max_turns_per_child = max_turns_per_child
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.interrupt_grace_s = interrupt_grace_s
        self.turn_event_buffer = turn_event_buffer
        self.stream_buffer_bytes = stream_buffer_bytes
        self.turn_idle_timeout_s = turn_idle_timeout_s
        self.turn_timeout_s = turn_timeout_s
        self.turn_retry_timeout_s = turn_retry_timeout_s
        self.overload_retries = overload_retries
        self.overload_backoff_s = overload_backoff_s
        self.workspace_dir = workspace_dir
        self.default_model = default_model
        self.thread_idle_release_s = thread_idle_release_s
        self.max_threads_per_child = max_threads_per_child
        self._waiters: collections.deque[object] = collections.deque()
        self._owners: dict[str, Child] = {}
        #: When each owned thread last ended a turn (for releasing idle ones).
        self._last_used: dict[str, float] = {}
        self._sweep_soon = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: An owned thread's token total after its last turn: the next turn's
        #: baseline (codex reports running totals of the whole thread).
        self._thread_totals: dict[str, TokenCounts] = {}
        self._threads = KeyedLocks()  # one turn at a time per thread
        self._models: list[ModelInfo] | None = None
        self._models_at = -math.inf
        self.accepting = True

    # -- admission -----------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def active_turns(self) -> int:
        return sum(child.load for child in self.pool.children)

    @staticmethod
    def load(child: Child) -> int:
        return child.load

    def owner(self, thread_id: str) -> Child | None:
        return self._owners.get(thread_id)

    def _pick(self, only: Child | None) -> Child | None:
        candidates = self.pool.usable_children if only is None else [only]
        best: Child | None = None
        # A child that has left a request unanswered this long is probably
        # hung: no new turn for it while the liveness watch decides.
        suspect_after = self.pool.policy.liveness_timeout_s / 2
        for child in candidates:
            if not child.usable or child.load >= self.max_turns_per_child:
                continue
            if only is None and child.unanswered_for() > suspect_after:
                continue
            if best is None or child.load < best.load:
                best = child
        return best

    async def _acquire(self, only: Child | None = None) -> Child:
        """A child with room for one more turn (``only`` that one), FIFO."""
        if self.pool.paused:
            raise NoChildAvailable(self.pool.unavailable_reason())
        child = self._pick(only) if not self._waiters else None
        if child is not None:
            child.load += 1
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
                        child = self._pick(only)
                        if child is not None:
                            child.load += 1
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
        child.load -= 1
        self.pool.notify_load_changed()

    async def _acquire_for(self, thread_id: str | None) -> tuple[Child, bool]:
        """The child to run on, and whether the thread must be resumed there."""
        if thread_id is None:
            return await self._acquire(), False
        owner = self._owners.get(thread_id)
        if (
            owner is not None
            and not owner.usable
            and owner.state is not ChildState.STOPPED
            and await self._release_held(thread_id)
        ):
            # Its owner is draining (or being replaced): let go of the thread
            # there, and resume it on a child that takes turns.
            owner = None
        if owner is not None and owner.stopping:
            # Its owner could not let go of it (it is dying, or hung); codex
            # frees the thread when the process exits.
            with trio.move_on_after(self.queue_timeout_s):
                while not is_stopped(owner):
                    await self.pool.wait_changed()
        if owner is not None and is_stopped(owner):
            self._disown(thread_id)
            owner = None
        if owner is None:
            return await self._acquire(), True
        return await self._acquire(owner), False

    def _disown(self, thread_id: str) -> None:
        owner = self._owners.pop(thread_id, None)
        if owner is not None:
            owner.threads.discard(thread_id)
            self.pool.notify_load_changed()  # what a child holds is part of its state
        self._thread_totals.pop(thread_id, None)
        self._last_used.pop(thread_id, None)

    # -- releasing threads -----------------------------------------------------------
    #
    # A loaded thread costs its child about 1 MiB, for as long as it is
    # loaded. Children are started with ``thread_unload_delay_secs = 0``, so
    # ``thread/unsubscribe`` unloads a thread at once (``thread/closed``), and
    # frees codex's lock on it: any child can then resume it.

    async def _unsubscribe(self, child: Child, thread_id: str, *, wait_closed: bool) -> bool:
        """Release ``thread_id`` on ``child``; True once codex let go of it.

        With ``wait_closed`` (a thread that will be resumed, maybe elsewhere)
        this waits for ``thread/closed``: a resume before it is refused.
        """
        if child.state in (ChildState.STOPPING, ChildState.STOPPED):
            return False
        peer = child.client.peer
        closed = trio.Event()

        def on_notification(notification: Notification) -> None:
            if notification.method == "thread/closed":
                closed.set()

        timeout = min(self.rpc_timeout_s, self.pool.policy.liveness_timeout_s)
        if wait_closed:
            peer.add_route(thread_id, on_notification)
        try:
            with trio.move_on_after(timeout) as deadline:
                status = await child.client.thread_unsubscribe(thread_id)
                if wait_closed and status == "unsubscribed":
                    await closed.wait()
            if deadline.cancelled_caught:
                log.warning("%s: thread %s was not released in time", child.name, thread_id)
                return False
        except (PeerClosed, RpcCallError) as exc:
            log.info("%s: cannot release thread %s: %s", child.name, thread_id, exc)
            return False
        finally:
            if wait_closed:
                peer.remove_route(thread_id, on_notification)
        return True

    async def release_thread(self, thread_id: str) -> bool:
        """Unload an owned thread that has no turn running; its next turn
        resumes it on whichever child has room. False if it could not be
        released now (a turn holds it, or its child does not answer)."""
        if self._threads.locked(thread_id):
            return False
        async with self._threads.hold(thread_id):
            return await self._release_held(thread_id)

    async def _release_held(self, thread_id: str) -> bool:
        owner = self._owners.get(thread_id)
        if owner is None:
            return True
        if await self._unsubscribe(owner, thread_id, wait_closed=True):
            self._disown(thread_id)
            return True
        return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The multiplexer's own background work, until cancelled.

        Releases threads nobody needs loaded: idle for
        ``thread_idle_release_s``, beyond ``max_threads_per_child`` on a child
        (least recently used first), or owned by a child that is gone. And
        interrupts, at once, turns failed for a consumer too slow to take
        their events (that consumer may be stuck writing to its client).
        """
        interval = min(60.0, self.thread_idle_release_s / 4)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                with trio.move_on_after(interval):
                    await self._sweep_soon.wait()
                self._sweep_soon = trio.Event()
                await self._sweep()

    async def _sweep(self) -> None:
        now = trio.current_time()
        doomed: list[str] = []
        per_child: dict[Child, list[str]] = {}
        for thread_id, owner in list(self._owners.items()):
            if owner.state is ChildState.STOPPED:
                self._disown(thread_id)  # gone with its child; resumed elsewhere when used
            elif now - self._last_used.get(thread_id, now) >= self.thread_idle_release_s:
                doomed.append(thread_id)
            else:
                per_child.setdefault(owner, []).append(thread_id)
        for threads in per_child.values():
            extra = len(threads) - self.max_threads_per_child
            if extra > 0:
                threads.sort(key=lambda t: self._last_used.get(t, now))
                doomed.extend(threads[:extra])
        for thread_id in doomed:
            await self.release_thread(thread_id)

    @asynccontextmanager
    async def _thread_gate(self, thread_id: str | None) -> AsyncIterator[None]:
        """A second turn/start on a busy thread would steer the first."""
        if thread_id is None:
            yield
            return
        async with self._threads.hold(thread_id):
            yield

    # -- models ----------------------------------------------------------------

    async def models(self, *, max_age_s: float = 60.0) -> list[ModelInfo]:
        """codex's model catalog (``model/list``), cached for ``max_age_s``.

        Every child lists the catalog when it starts, so this normally costs
        no request at all. When the cache is older than ``max_age_s`` the
        usable children are asked in turn, each with a short deadline; one
        that does not answer is skipped (the liveness check deals with it),
        and the last known catalog is served if none answers.
        """
        now = trio.current_time()
        for child in self.pool.usable_children:
            # A child lists the catalog at start; a newer child's catalog wins
            # at once (one replaced to load a changed config, say).
            if child.models is not None and (
                child.models_at is not None and child.models_at > self._models_at
            ):
                self._remember_models(list(child.models), child.models_at)
        if self._models is not None and now - self._models_at < max_age_s:
            return self._models
        failures = []
        for child in sorted(self.pool.usable_children, key=lambda c: c.load):
            try:
                models = await child.client.model_list(
                    timeout_s=self.pool.policy.liveness_timeout_s
                )
            except trio.TooSlowError:
                failures.append(f"{child.name}: no answer in time")
            except (PeerClosed, RpcCallError) as exc:
                failures.append(f"{child.name}: {exc}")
            else:
                self._remember_models(models, trio.current_time())
                return models
        if self._models is not None:
            return self._models
        if failures:
            raise NoChildAvailable("cannot list codex models: " + "; ".join(failures))
        raise NoChildAvailable(self.pool.unavailable_reason())

    def _remember_models(self, models: list[ModelInfo], at: float) -> None:
        self._models = models
        self._models_at = at

    # -- turns -------------------------------------------------------------------

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[Turn]:
        """Start a turn and yield it; interrupt it if left unfinished.

        Raises a :class:`TurnRefused` subclass when no turn could be started
        (nothing was sent to the model). A child that dies while the turn is
        being set up is replaced by another child once, and codex's overload
        errors are retried with backoff, transparently. Turns on one thread
        run one at a time. On exit — normal, exception or cancellation — an
        unfinished turn is interrupted (bounded by ``interrupt_grace_s``,
        shielded); a child that does not answer the interrupt is killed.
        """
        if not self.accepting:
            raise ShuttingDown("the service is shutting down; retry on another instance")
        async with self._thread_gate(request.thread_id):
            child, turn = await self._start_with_retries(request)
            try:
                yield turn
            finally:
                with trio.CancelScope(shield=True):
                    await self._finish(child, turn)
                    child.turns.discard(turn)
                    child.client.peer.remove_route(turn.thread_id, turn.on_notification)
                    if turn.thread_id in self._owners:
                        self._last_used[turn.thread_id] = trio.current_time()
                        if turn.thread_total is not None:
                            self._thread_totals[turn.thread_id] = turn.thread_total
                        if len(child.threads) > self.max_threads_per_child:
                            self._sweep_soon.set()
                    elif turn.wait_codex_finished_nowait():
                        # A one-off thread: nothing will use it again.
                        await self._unsubscribe(child, turn.thread_id, wait_closed=False)
                    child.turns_served += 1
                    self._release(child)
                    self.pool.turn_finished(child)

    async def _start_with_retries(self, request: TurnRequest) -> tuple[Child, Turn]:
        child_deaths = 0
        overloads = 0
        while True:
            child, resume = await self._acquire_for(request.thread_id)
            try:
                return child, await self._start(child, request, resume=resume)
            except (PeerClosed, _ChildHung) as exc:
                self._release(child)
                if isinstance(exc, _ChildHung):
                    self.pool.kill(child, str(exc))
                child_deaths += 1
                if child_deaths > max(1, self.pool.size - 1):
                    raise NoChildAvailable(f"codex app-server went away: {exc}") from exc
                log.warning("%s went away while starting a turn; trying another child", child.name)
            except _CodexOverloaded as exc:
                self._release(child)
                overloads += 1
                if overloads > self.overload_retries:
                    raise Overloaded(
                        f"codex is overloaded: {exc}", retry_after_s=self.overload_backoff_s * 8
                    ) from exc
                delay = self.overload_backoff_s * 2 ** (overloads - 1)
                log.info("%s is overloaded (%s); retrying in %.2fs", child.name, exc, delay)
                await trio.sleep(delay)
            except BaseException:
                self._release(child)
                raise

    async def _call(self, child: Child, what: str, call: Awaitable[T]) -> T:
        """Await one codex call of a turn's set-up, mapping its failures."""
        try:
            return await call
        except RpcCallError as exc:
            if exc.code == OVERLOADED:
                raise _CodexOverloaded(exc.message) from exc
            if isinstance(exc.data, dict) and exc.data.get("input_error_code") == "input_too_large":
                raise InputTooLarge(exc.message) from exc
            raise CodexRejected(f"codex refused to {what}: {exc.message}") from exc
        except trio.TooSlowError as exc:
            raise _ChildHung(f"did not {what} within {self.rpc_timeout_s:g}s") from exc

    async def _open_thread(
        self, child: Child, request: TurnRequest, resume: bool
    ) -> tuple[str, str]:
        """(thread id, model) of the thread the turn runs on."""
        client = child.client
        timeout = self.rpc_timeout_s
        if request.thread_id is not None and resume:
            try:
                resumed = await client.thread_resume(
                    ThreadResumeParams(request.thread_id, exclude_turns=True), timeout_s=timeout
                )
            except RpcCallError as exc:
                if exc.code == OVERLOADED:
                    raise _CodexOverloaded(exc.message) from exc
                raise ThreadUnavailable(
                    f"thread {request.thread_id} cannot be resumed: {exc.message}"
                ) from exc
            except trio.TooSlowError as exc:
                raise _ChildHung(f"did not resume a thread within {self.rpc_timeout_s:g}s") from exc
            thread_id, model = resumed.thread.id, resumed.model
        elif request.thread_id is not None:
            return request.thread_id, request.model or self.default_model or ""
        else:
            started = await self._call(
                child,
                "start a thread",
                client.thread_start(
                    ThreadStartParams(
                        model=request.model or self.default_model,
                        cwd=request.cwd or self.workspace_dir,
                        developer_instructions=request.developer_instructions,
                        ephemeral=request.ephemeral,
                    ),
                    timeout_s=timeout,
                ),
            )
            thread_id, model = started.thread.id, started.model
        if not request.ephemeral or request.thread_id is not None:
            self._owners[thread_id] = child
            child.threads.add(thread_id)
        return thread_id, model

    async def _start(self, child: Child, request: TurnRequest, *, resume: bool) -> Turn:
        if child.auth_problem is not None:
            try:
                problem = await child.check_auth()
            except (RpcCallError, trio.TooSlowError):
                problem = child.auth_problem
            if problem is not None:
                raise NotAuthenticated(problem)
        thread_id, model = await self._open_thread(child, request, resume)
        if request.revert_before_turn is not None:
            try:
                await child.client.thread_revert(
                    ThreadRevertParams(thread_id, request.revert_before_turn),
                    timeout_s=self.rpc_timeout_s,
                )
            except RpcCallError as exc:
                raise ThreadUnavailable(f"thread {thread_id} cannot be rolled back: {exc}") from exc
            except trio.TooSlowError as exc:
                raise _ChildHung(
                    f"did not roll a thread back within {self.rpc_timeout_s:g}s"
                ) from exc
        turn = Turn(
            thread_id=thread_id,
            child_name=child.name,
            model=model or request.model or "",
            buffer_size=self.turn_event_buffer,
            max_buffered_bytes=self.stream_buffer_bytes,
            idle_timeout_s=self.turn_idle_timeout_s,
            turn_timeout_s=self.turn_timeout_s,
            retry_timeout_s=self.turn_retry_timeout_s,
            usage_baseline=(
                TokenCounts()  # a fresh thread
                if request.thread_id is None
                else None
                if request.revert_before_turn is not None
                else self._thread_totals.get(thread_id)
            ),
        )
        turn.on_failure = partial(self._turn_failed, child, turn)
        # Route before turn/start: codex may emit events before answering.
        peer = child.client.peer
        peer.add_route(thread_id, turn.on_notification)
        child.turns.add(turn)
        try:
            if request.history:
                await self._call(
                    child,
                    "replay the history",
                    child.client.thread_inject_items(
                        InjectItemsParams(thread_id, [dict(item) for item in request.history]),
                        timeout_s=self.rpc_timeout_s,
                    ),
                )
            result = await self._call(
                child,
                "start the turn",
                child.client.turn_start(
                    TurnStartParams(
                        thread_id,
                        [TextInput(request.text)],
                        model=request.model if request.thread_id else None,
                        effort=request.effort,
                        summary=request.summary,
                    ),
                    timeout_s=self.rpc_timeout_s,
                ),
            )
        except BaseException:
            child.turns.discard(turn)
            peer.remove_route(thread_id, turn.on_notification)
            if thread_id not in self._owners:  # a one-off thread no turn will use
                with trio.CancelScope(shield=True):
                    await self._unsubscribe(child, thread_id, wait_closed=False)
            raise
        turn.turn_id = result.turn.id
        return turn

    def _turn_failed(self, child: Child, turn: Turn, kind: FailureKind) -> None:
        """A turn whose consumer fell too far behind: codex must stop now,
        not when that consumer (blocked writing to a client that does not
        read) gets around to leaving the turn."""
        if kind is FailureKind.CONSUMER_TOO_SLOW and self._nursery is not None and turn.turn_id:
            self._nursery.start_soon(self._interrupt_now, child, turn)

    async def _interrupt_now(self, child: Child, turn: Turn) -> None:
        with trio.move_on_after(self.interrupt_grace_s):
            try:
                await child.client.turn_interrupt(TurnInterruptParams(turn.thread_id, turn.turn_id))
            except (PeerClosed, RpcCallError) as exc:
                log.info("%s: interrupt of %s: %s", child.name, turn.turn_id, exc)
        # Whether codex confirmed or not, leaving the turn finishes the job.

    async def _finish(self, child: Child, turn: Turn) -> None:
        """Interrupt an unfinished turn and wait (bounded) for codex to end it."""
        if turn.finished and turn.failure_kind is None:
            return  # codex ended it
        if is_stopped(child) or turn.failure_kind is FailureKind.CHILD_EXITED:
            turn.fail(FailureKind.CANCELLED, "the turn was abandoned")
            return
        answered = gone = False
        with trio.move_on_after(self.interrupt_grace_s):
            try:
                await child.client.turn_interrupt(TurnInterruptParams(turn.thread_id, turn.turn_id))
                answered = True
                await turn.wait_codex_finished()
            except PeerClosed:
                gone = True
            except RpcCallError as exc:  # e.g. "no active turn to interrupt"
                answered = True
                log.info("%s: interrupt of %s: %s", child.name, turn.turn_id, exc)
        if gone or is_stopped(child):
            pass
        elif not answered:
            self.pool.kill(child, f"no answer to turn/interrupt within {self.interrupt_grace_s:g}s")
        elif not turn.wait_codex_finished_nowait() and not child.stopping:
            # codex took the interrupt but never closed the turn, so the
            # thread may still count as busy there: replace the child once
            # its other turns are done.
            self.pool.restart(child, "a turn did not end after its interrupt")
        turn.fail(FailureKind.CANCELLED, "the turn was interrupted")
        if turn.running_commands and child.pid is not None and not is_stopped(child):
            await stop_commands(child.pid, list(turn.running_commands.values()))


async def stop_commands(child_pid: int, commands: list[str]) -> None:
    """Kill what is left of an interrupted turn's commands.

    codex answers ``turn/interrupt`` but leaves a running command going, and
    nobody will read its output any more. The item's ``processId`` is a pid
    inside the sandbox's pid namespace, so the command is found by its argv
    among the child's descendants; what is killed is the whole subtree that
    codex started for it (the sandbox wrapper, a direct child of codex).
    """
    wanted = []
    for command in commands:
        with contextlib.suppress(ValueError):
            wanted.append(shlex.split(command))
    doomed = await trio.to_thread.run_sync(_command_subtrees, child_pid, wanted)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if doomed:
        log.info("killed %d leftover process(es) of an interrupted turn", len(doomed))


def _command_subtrees(child_pid: int, argvs: list[list[str]]) -> list[int]:
    table = process_table()
    found: set[int] = set()
    for pid in descendants(child_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if argv.rstrip("\0").split("\0") not in argvs:
            continue
        top = pid  # climb to the process codex itself started
        while top in table and table[top].ppid != child_pid:
            top = table[top].ppid
        if top in table:
            found.add(top)
            found.update(descendants(top))
    return sorted(found)


def is_stopped(child: Child) -> bool:
    return child.state is ChildState.STOPPED


class ShuttingDown(TurnRefused):
    code = "shutting_down"


class _CodexOverloaded(Exception):
    """codex answered -32001: try again later or elsewhere."""


class _ChildHung(Exception):
    """A child did not answer a request of a turn's set-up in time: it is
    killed, and the turn is tried on another child."""
