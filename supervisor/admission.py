"""Admission: which child a turn runs on, and who waits for one.

A turn takes a slot on the least busy usable child; a child runs at most
``max_turns_per_child`` turns at a time. When every slot is taken, up to
``queue_size`` callers wait, first come first served, for at most
``queue_timeout_s``; past either bound the caller is refused
(:class:`Overloaded`).
"""

from __future__ import annotations

import collections

import trio

from .child import Child
from .outcome import NoChildAvailable, Overloaded
from .pool import Pool


class Admission:
    """Slots on the children of ``pool`` and the FIFO queue for them."""

    def __init__(
        self, pool: Pool, *, max_turns_per_child: int, queue_size: int, queue_timeout_s: float
    ) -> None:
        self.pool = pool
        self.max_turns_per_child = max_turns_per_child
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self._waiters: collections.deque[object] = collections.deque()

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    @property
    def active_turns(self) -> int:
        """Slots taken, over all children."""
        return sum(child.load for child in self.pool.children)

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

    async def acquire(self, only: Child | None = None) -> Child:
        """A child with room for one more turn (``only`` that one), FIFO;
        its slot is taken until :meth:`release`."""
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

    def release(self, child: Child) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        child.load -= 1
        self.pool.notify_load_changed()
