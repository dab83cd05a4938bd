"""A fixed number of warm codex children, restarted when they exit."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import trio

from .child import Child, ChildLaunch, ChildStartError, ChildState

log = logging.getLogger(__name__)


class Pool:
    """``size`` slots, each running one child at a time.

    ``run`` (start it with ``nursery.start``) reports started once every
    slot's first child has either completed its handshake or failed to; a slot
    whose child exits or fails starts a new one after an exponential backoff
    with jitter. Cancelling ``run`` stops every child and reaps it before
    returning. Observers wait on :meth:`wait_changed` for readiness changes.
    """

    def __init__(
        self,
        size: int,
        launch: ChildLaunch,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        name: Callable[[int, int], str] = lambda slot, gen: f"codex-{slot}.{gen}",
    ) -> None:
        self.size = size
        self.launch = launch
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._name = name
        self.slots: list[Child | None] = [None] * size
        self.restarts = [0] * size
        self.last_exit_reason: list[str | None] = [None] * size
        self._changed = trio.Event()

    # -- observers ---------------------------------------------------------

    @property
    def children(self) -> list[Child]:
        return [child for child in self.slots if child is not None]

    @property
    def usable_children(self) -> list[Child]:
        return [child for child in self.slots if child is not None and child.usable]

    @property
    def live(self) -> bool:
        return bool(self.usable_children)

    def unavailable_reason(self) -> str:
        reasons = [r for r in self.last_exit_reason if r]
        if reasons:
            return "no codex app-server is running; the last one " + reasons[-1]
        return "the codex app-server pool is starting"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of any child's state or load."""
        await self._changed.wait()

    def notify_load_changed(self) -> None:
        self._notify()

    # -- running -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Pool] = trio.TASK_STATUS_IGNORED) -> None:
        first_round = [trio.Event() for _ in range(self.size)]
        async with trio.open_nursery() as nursery:
            for slot in range(self.size):
                nursery.start_soon(self._run_slot, slot, first_round[slot])
            for event in first_round:
                await event.wait()
            task_status.started(self)

    async def _run_slot(self, slot: int, first_attempt: trio.Event) -> None:
        generation = 0
        failures = 0
        while True:
            child = Child(self._name(slot, generation), self.launch)
            generation += 1
            self.slots[slot] = child
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(child.run)
                    except ChildStartError as exc:
                        log.error("%s: failed to start: %s", child.name, exc)
                        child.exit_reason = child.exit_reason or str(exc)
                        failures += 1
                    else:
                        failures = 0
                        first_attempt.set()
                        self._notify()
            finally:
                first_attempt.set()
                self.last_exit_reason[slot] = child.exit_reason
                child.state = ChildState.STOPPED
                self._notify()
            self.restarts[slot] += 1
            delay = self._backoff(failures)
            log.warning("%s: %s; restarting in %.2fs", child.name, child.exit_reason, delay)
            await trio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        if failures == 0:
            return self.backoff_initial_s * random.uniform(0.5, 1.0)
        base = min(self.backoff_max_s, self.backoff_initial_s * math.pow(2, failures - 1))
        return base * random.uniform(0.5, 1.0)  # jitter keeps slots from restarting in step
