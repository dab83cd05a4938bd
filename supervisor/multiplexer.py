"""Turn multiplexer: from a turn request to a running turn on some child.

:class:`TurnMultiplexer` composes the parts: admission
(:mod:`.admission`: a slot on the least busy usable child, or a fair wait
for one), thread ownership (:mod:`.threads`: which child a thread's turns
go to, one at a time, and releasing threads nobody needs loaded), the model
catalog (:mod:`.catalog`) and killing an interrupted turn's leftover
commands (:mod:`.commands`).

What it does itself is a turn's set-up and finish. Set-up: open the thread
(start a fresh one, resume or roll back an existing one), replay history
into it, start the turn and route the thread's notifications to the
:class:`~supervisor.turn.Turn` — on another child when one dies or hangs
meanwhile, and with backoff when codex is overloaded. Finish: leaving the
turn's context before codex finished it (client gone, error, cancellation)
sends ``turn/interrupt`` and waits, bounded, for codex to confirm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import trio

from bridge.peer import PeerClosed, RpcCallError
from bridge.protocol import (
    ImageUrlInput,
    InjectItemsParams,
    LocalImageInput,
    ModelInfo,
    TextInput,
    ThreadResumeParams,
    ThreadRevertParams,
    ThreadStartParams,
    TokenCounts,
    TurnInterruptParams,
    TurnStartParams,
    UserInput,
)

from .admission import Admission
from .catalog import ModelCatalog
from .child import Child, ChildState
from .commands import stop_commands
from .outcome import (
    CodexRejected,
    FailureKind,
    InputTooLarge,
    NoChildAvailable,
    NotAuthenticated,
    Overloaded,
    ShuttingDown,
    ThreadUnavailable,
    TurnRefused,
)
from .pool import ExitKind, Pool
from .threads import ThreadOwnership
from .turn import Turn, TurnRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


#: JSON-RPC error code codex uses when it is overloaded.
OVERLOADED = -32001


class TurnMultiplexer:
    """Hands out turns on the children of ``pool``.

    Limits (:class:`~supervisor.admission.Admission`): ``max_turns_per_child``
    running turns per child; beyond that up to ``queue_size`` callers wait,
    first come first served, for at most ``queue_timeout_s``; past either
    bound :class:`Overloaded` is raised (with a retry-after hint).

    Threads (:class:`~supervisor.threads.ThreadOwnership`): a non-ephemeral
    thread is owned by the child that created or resumed it (codex refuses a
    second writer). Turns on it go to the owner; when the owner is gone the
    thread is resumed on another child; turns on one thread are serialized.
    :meth:`run` releases threads idle for ``thread_idle_release_s`` or beyond
    ``max_threads_per_child`` on a child.
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
        self.accepting = True
        self._admission = Admission(
            pool,
            max_turns_per_child=max_turns_per_child,
            queue_size=queue_size,
            queue_timeout_s=queue_timeout_s,
        )
        self._threads = ThreadOwnership(
            pool,
            rpc_timeout_s=rpc_timeout_s,
            idle_release_s=thread_idle_release_s,
            max_per_child=max_threads_per_child,
        )
        self._catalog = ModelCatalog(pool)
        #: Where turns failed for a slow consumer are interrupted (see run).
        self._nursery: trio.Nursery | None = None

    # -- state -------------------------------------------------------------------

    @property
    def max_turns_per_child(self) -> int:
        return self._admission.max_turns_per_child

    @property
    def queued(self) -> int:
        return self._admission.queued

    @property
    def active_turns(self) -> int:
        return self._admission.active_turns

    @staticmethod
    def load(child: Child) -> int:
        return child.load

    def owner(self, thread_id: str) -> Child | None:
        return self._threads.owner(thread_id)

    async def models(self, *, max_age_s: float = 60.0) -> list[ModelInfo]:
        """codex's model catalog, see :meth:`ModelCatalog.models
        <supervisor.catalog.ModelCatalog.models>`."""
        return await self._catalog.models(max_age_s=max_age_s)

    # -- background work and releasing threads ---------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The multiplexer's own background work, until cancelled.

        Releases threads nobody needs loaded: idle for
        ``thread_idle_release_s``, beyond ``max_threads_per_child`` on a child
        (least recently used first), or owned by a child that is gone. And
        interrupts, at once, turns failed for a consumer too slow to take
        their events (that consumer may be stuck writing to its client).
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._threads.keep_released()

    async def release_thread(self, thread_id: str) -> bool:
        """Unload an owned thread that has no turn running; its next turn
        resumes it on whichever child has room. False if it could not be
        released now (a turn holds it, or its child does not answer)."""
        return await self._threads.release(thread_id)

    async def _sweep(self) -> None:
        """One pass of :meth:`run`'s thread release, now."""
        await self._threads.sweep()

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
        async with self._threads.gate(request.thread_id):
            child, turn = await self._start_with_retries(request)
            try:
                yield turn
            finally:
                with trio.CancelScope(shield=True):
                    await self._finish(child, turn)
                    if self._threads.owner(turn.thread_id) is not None:
                        self._threads.turn_ended(child, turn.thread_id, turn.thread_total)
                    await self._detach(child, turn, unsubscribe=turn.wait_codex_finished_nowait())
                    child.turns_served += 1
                    self._admission.release(child)
                    self.pool.turn_finished(child)

    async def _detach(self, child: Child, turn: Turn, *, unsubscribe: bool) -> None:
        """The turn no longer runs on ``child``. With ``unsubscribe``, a
        one-off thread (one no child owns) is unsubscribed there, shielded:
        no turn will use it again."""
        child.turns.discard(turn)
        # A client's function call still waiting ends with the turn.
        child.client.fail_tool_calls(turn.thread_id, "the turn ended before the client's result")
        child.client.peer.remove_route(turn.thread_id, turn.on_notification)
        if unsubscribe and self._threads.owner(turn.thread_id) is None:
            with trio.CancelScope(shield=True):
                await self._threads.unsubscribe(child, turn.thread_id, wait_closed=False)

    async def _acquire_for(self, thread_id: str | None) -> tuple[Child, bool]:
        """The child to run on (a slot taken on it), and whether the thread
        must be resumed there."""
        if thread_id is None:
            return await self._admission.acquire(), False
        owner = await self._threads.settle_owner(thread_id, wait_s=self._admission.queue_timeout_s)
        if owner is None:
            return await self._admission.acquire(), True
        return await self._admission.acquire(owner), False

    async def _start_with_retries(self, request: TurnRequest) -> tuple[Child, Turn]:
        child_deaths = 0
        overloads = 0
        began = trio.current_time()
        queued = 0.0  # of the time since ``began``, how long it waited for a child
        while True:
            before = trio.current_time()
            try:
                child, resume = await self._acquire_for(request.thread_id)
            except TurnRefused as exc:
                exc.queue_wait_s = queued + trio.current_time() - before
                raise
            queued += trio.current_time() - before
            try:
                turn = await self._start(child, request, resume=resume)
                turn.queue_wait_s = queued
                turn.setup_s = trio.current_time() - began - queued
                return child, turn
            except (PeerClosed, _ChildHung) as exc:
                self._admission.release(child)
                if isinstance(exc, _ChildHung):
                    self.pool.kill(child, str(exc))
                child_deaths += 1
                if child_deaths > max(1, self.pool.size - 1):
                    raise NoChildAvailable(f"codex app-server went away: {exc}") from exc
                log.warning("%s went away while starting a turn; trying another child", child.name)
            except _CodexOverloaded as exc:
                self._admission.release(child)
                overloads += 1
                if overloads > self.overload_retries:
                    raise Overloaded(
                        f"codex is overloaded: {exc}", retry_after_s=self.overload_backoff_s * 8
                    ) from exc
                delay = self.overload_backoff_s * 2 ** (overloads - 1)
                log.info("%s is overloaded (%s); retrying in %.2fs", child.name, exc, delay)
                await trio.sleep(delay)
            except BaseException:
                self._admission.release(child)
                raise

    async def _call(
        self,
        what: str,
        call: Awaitable[T],
        refused: Callable[[RpcCallError], TurnRefused] | None = None,
        *,
        retry_overloaded: bool = True,
    ) -> T:
        """Await one codex call of a turn's set-up, mapping its failures.

        An error answer: codex overloaded is retried (with
        ``retry_overloaded``); others are refused as ``refused(error)``, by
        default :class:`CodexRejected` (or :class:`InputTooLarge`). No answer
        in time: the child is taken for hung.
        """
        try:
            return await call
        except RpcCallError as exc:
            if retry_overloaded and exc.code == OVERLOADED:
                raise _CodexOverloaded(exc.message) from exc
            if refused is not None:
                raise refused(exc) from exc
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
            wanted = request.thread_id
            resumed = await self._call(
                "resume a thread",
                client.thread_resume(
                    ThreadResumeParams(wanted, exclude_turns=True), timeout_s=timeout
                ),
                lambda exc: ThreadUnavailable(f"thread {wanted} cannot be resumed: {exc.message}"),
            )
            thread_id, model = resumed.thread.id, resumed.model
        elif request.thread_id is not None:
            return request.thread_id, request.model or self.default_model or ""
        else:
            started = await self._call(
                "start a thread",
                client.thread_start(
                    ThreadStartParams(
                        model=request.model or self.default_model,
                        cwd=request.cwd or self.workspace_dir,
                        developer_instructions=request.developer_instructions,
                        ephemeral=request.ephemeral,
                        dynamic_tools=[dict(tool) for tool in request.tools] or None,
                    ),
                    timeout_s=timeout,
                ),
            )
            thread_id, model = started.thread.id, started.model
        if not request.ephemeral or request.thread_id is not None:
            self._threads.adopt(thread_id, child)
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
            await self._call(
                "roll a thread back",
                child.client.thread_revert(
                    ThreadRevertParams(thread_id, request.revert_before_turn),
                    timeout_s=self.rpc_timeout_s,
                ),
                lambda exc: ThreadUnavailable(f"thread {thread_id} cannot be rolled back: {exc}"),
                retry_overloaded=False,
            )
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
                else self._threads.total(thread_id)
            ),
        )
        turn.on_failure = partial(self._turn_failed, child, turn)
        turn.answer_tool_call = child.client.answer_tool_call
        # Route before turn/start: codex may emit events before answering.
        child.client.peer.add_route(thread_id, turn.on_notification)
        child.turns.add(turn)
        try:
            if request.history:
                await self._call(
                    "replay the history",
                    child.client.thread_inject_items(
                        InjectItemsParams(thread_id, [dict(item) for item in request.history]),
                        timeout_s=self.rpc_timeout_s,
                    ),
                )
            result = await self._call(
                "start the turn",
                child.client.turn_start(
                    TurnStartParams(
                        thread_id,
                        _turn_input(request),
                        model=request.model if request.thread_id else None,
                        effort=request.effort,
                        summary=request.summary,
                        output_schema=request.output_schema,
                        approval_policy=request.approval_policy,
                        permissions=_permissions(child, request),
                    ),
                    timeout_s=self.rpc_timeout_s,
                ),
            )
        except BaseException:
            await self._detach(child, turn, unsubscribe=True)
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
        """Interrupt an unfinished turn and wait (bounded) for codex to end
        it; then kill what is left of its commands."""
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
            self.pool.restart(child, "a turn did not end after its interrupt", kind=ExitKind.HUNG)
        turn.fail(FailureKind.CANCELLED, "the turn was interrupted")
        if turn.running_commands and child.pid is not None and not is_stopped(child):
            await stop_commands(child.pid, list(turn.running_commands.values()))


def is_stopped(child: Child) -> bool:
    return child.state is ChildState.STOPPED


class _CodexOverloaded(Exception):
    """codex answered -32001: try again later or elsewhere."""


class _ChildHung(Exception):
    """A child did not answer a request of a turn's set-up in time: it is
    killed, and the turn is tried on another child."""


def _turn_input(request: TurnRequest) -> list[UserInput]:
    items: list[UserInput] = [TextInput(request.text)]
    items += [LocalImageInput(path) for path in request.local_images]
    items += [ImageUrlInput(url) for url in request.image_urls]
    return items


def _permissions(child: Child, request: TurnRequest) -> str | None:
    """The permissions profile to select for this turn, if not the child's default.

    A profile selected on a turn stays with its thread, so a thread that
    goes on after a read-only turn gets the default profile back explicitly.
    """
    policy = child.launch.command_policy
    if policy is None or not policy.confined:
        return None
    if request.read_only:
        return policy.read_only_profile
    return policy.profile if request.thread_id is not None else None
