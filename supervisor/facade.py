"""The supervisor as the layers above see it: one small facade.

The front doors and the program open turns, list models, ask about health
and readiness, read the status and act as an operator through
:class:`Supervisor` — never through the pool's or a child's attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from bridge.peer import PeerClosed
from bridge.protocol import ModelInfo, RateLimitWindow

from .child import Child
from .multiplexer import TurnMultiplexer
from .outcome import FailureKind
from .pool import Pool
from .turn import Turn, TurnRequest

log = logging.getLogger(__name__)


@attrs.frozen
class Health:
    """Liveness: children that can take a turn now, of how many."""

    children_ready: int
    children: int
    #: Why no child is usable (None when one is).
    reason: str | None


@attrs.frozen
class Readiness:
    """Ready to take a turn now: accepting, and a usable child that can
    reach its model."""

    children_ready: int
    #: Why not ready (None when ready).
    reason: str | None = None
    #: Not ready because codex has no login.
    not_authenticated: bool = False

    @property
    def ready(self) -> bool:
        return self.reason is None


@attrs.frozen
class ChildRef:
    """A child an operator acted on."""

    name: str
    slot: int


class Supervisor:
    """Pool and multiplexer behind one facade (see the module docstring)."""

    def __init__(self, pool: Pool, multiplexer: TurnMultiplexer) -> None:
        self._pool = pool
        self._mux = multiplexer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children and the multiplexer's background work; started
        once the pool is up. Cancelling it stops and reaps every child."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._pool.run)
            await nursery.start(self._mux.run)
            task_status.started()

    # -- turns ---------------------------------------------------------------------

    def open_turn(self, request: TurnRequest) -> AbstractAsyncContextManager[Turn]:
        """See :meth:`TurnMultiplexer.open_turn`: raises
        :class:`~supervisor.outcome.TurnRefused` when no turn could start."""
        return self._mux.open_turn(request)

    async def models(self) -> list[ModelInfo]:
        """codex's model catalog (cached briefly); TurnRefused without a child."""
        return await self._mux.models()

    @property
    def workspace_dir(self) -> str | None:
        return self._mux.workspace_dir

    # -- health and status -----------------------------------------------------------

    def health(self) -> Health:
        pool = self._pool
        ready = len(pool.usable_children)
        return Health(ready, pool.size, None if ready else pool.unavailable_reason())

    def readiness(self) -> Readiness:
        pool = self._pool
        ready = len(pool.usable_children)
        if not self._mux.accepting:
            return Readiness(ready, "the service is shutting down")
        if not pool.ready:
            reason = pool.not_ready_reason()
            return Readiness(ready, reason, reason == pool.auth_problem)
        return Readiness(ready)

    @property
    def healthy(self) -> bool:
        """False when every slot's breaker is open (systemd's watchdog stops)."""
        return self._pool.healthy

    @property
    def auth_problem(self) -> str | None:
        return self._pool.auth_problem

    def status(self) -> dict[str, Any]:
        """Every child and the pool's counters, as JSON-ready values."""
        mux = self._mux
        status = self._pool.status()
        status.update(
            accepting=mux.accepting,
            active_turns=mux.active_turns,
            queued=mux.queued,
            max_turns_per_child=mux.max_turns_per_child,
        )
        return status

    def restart_counts(self) -> Mapping[str, int]:
        """Children that ended and were replaced, by why (see :class:`Pool`)."""
        return self._pool.restart_counts

    def rate_limits(self) -> tuple[RateLimitWindow, ...]:
        """The account's rate-limit windows as codex last reported them
        (any child: they share the account); none before a report."""
        latest: tuple[float, tuple[RateLimitWindow, ...]] = (0.0, ())
        for child in self._pool.children:
            try:
                client = child.client
            except PeerClosed:
                continue
            if client.rate_limits and client.rate_limits_at > latest[0]:
                latest = (client.rate_limits_at, client.rate_limits)
        return latest[1]

    def status_line(self) -> str:
        """One line (systemd's STATUS=)."""
        pool, mux = self._pool, self._mux
        line = (
            f"{len(pool.usable_children)}/{pool.size} children ready, "
            f"{mux.active_turns} turns running, {mux.queued} queued"
        )
        if pool.rolling_restart_running:
            line += ", rolling restart"
        if not mux.accepting:
            line += ", shutting down"
        return line

    async def wait_changed(self) -> None:
        """Return at the next change of any child's state or load."""
        await self._pool.wait_changed()

    # -- operator actions ------------------------------------------------------------

    def pause(self) -> None:
        """No new turns (they are refused); running ones go on."""
        self._set_paused(True)

    def resume(self) -> None:
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        self._pool.paused = paused
        self._pool.notify_load_changed()

    @property
    def paused(self) -> bool:
        return self._pool.paused

    def start_rolling_restart(self) -> bool:
        """Replace every child, one by one; False if one is already running."""
        return self._pool.start_rolling_restart()

    def restart_child(self, name: str) -> ChildRef:
        """Drain the child, then replace it. :class:`UnknownChild` if no such child."""
        child = self._pool.find(name)
        self._pool.restart(child, "restarted by an operator")
        return self._ref(child)

    def drain_child(self, name: str) -> ChildRef:
        """No new turns for the child."""
        child = self._pool.find(name)
        self._pool.drain(child)
        return self._ref(child)

    def undrain_child(self, name: str) -> ChildRef:
        child = self._pool.find(name)
        self._pool.undrain(child)
        return self._ref(child)

    def _ref(self, child: Child) -> ChildRef:
        return ChildRef(child.name, self._pool.slot_of(child).index)

    # -- shutdown ------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._mux.accepting

    async def shutdown(self, *, grace_s: float, interrupt_grace_s: float) -> None:
        """Refuse new turns, let running ones finish for ``grace_s``, then
        stop the rest (their consumers see ``FailureKind.SHUTDOWN``)."""
        mux, pool = self._mux, self._pool
        mux.accepting = False
        log.info("shutting down: %d turns running", mux.active_turns)
        with trio.move_on_after(grace_s):
            while mux.active_turns:
                await pool.wait_changed()
        if not mux.active_turns:
            return
        log.warning("shutting down: interrupting %d turns", mux.active_turns)
        for child in pool.children:
            for turn in list(child.turns):
                turn.fail(
                    FailureKind.SHUTDOWN, "the service is shutting down; the turn was stopped"
                )
        with trio.move_on_after(interrupt_grace_s + 1.0):
            while mux.active_turns:
                await pool.wait_changed()
