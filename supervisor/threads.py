"""Thread ownership: which child holds which codex thread, and letting go.

A non-ephemeral thread is owned by the child that created or resumed it
(codex refuses a second writer). Its turns go to the owner, one at a time
(:meth:`ThreadOwnership.gate`: a second ``turn/start`` on a busy thread
would steer the first); when the owner is draining, stopping or gone, the
thread is let go of there and resumed on another child. Kept per owned
thread: when it last ended a turn, and its token total after that turn —
the next turn's usage baseline (codex reports running totals of the whole
thread).

A loaded thread costs its child about 1 MiB, for as long as it is loaded.
Children are started with ``thread_unload_delay_secs = 0``, so
``thread/unsubscribe`` unloads a thread at once (``thread/closed``), and
frees codex's lock on it: any child can then resume it. A background sweep
releases the threads nobody needs loaded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from bridge.messages import Notification
from bridge.peer import PeerClosed, RpcCallError
from bridge.protocol import TokenCounts

from .child import Child, ChildState
from .keyed_locks import KeyedLocks
from .pool import Pool

log = logging.getLogger(__name__)


class ThreadOwnership:
    """The owned threads of the children of ``pool``.

    Released by :meth:`keep_released`: threads idle for ``idle_release_s``,
    beyond ``max_per_child`` on a child (least recently used first), or owned
    by a child that is gone. ``rpc_timeout_s`` bounds an unsubscribe.
    """

    def __init__(
        self, pool: Pool, *, rpc_timeout_s: float, idle_release_s: float, max_per_child: int
    ) -> None:
        self.pool = pool
        self.rpc_timeout_s = rpc_timeout_s
        self.idle_release_s = idle_release_s
        self.max_per_child = max_per_child
        self._owners: dict[str, Child] = {}
        #: When each owned thread last ended a turn (for releasing idle ones).
        self._last_used: dict[str, float] = {}
        #: An owned thread's token total after its last turn.
        self._totals: dict[str, TokenCounts] = {}
        self._sweep_soon = trio.Event()
        self._locks = KeyedLocks()  # one turn at a time per thread

    def owner(self, thread_id: str) -> Child | None:
        return self._owners.get(thread_id)

    def total(self, thread_id: str) -> TokenCounts | None:
        """The thread's token total after its last turn, if known."""
        return self._totals.get(thread_id)

    def adopt(self, thread_id: str, child: Child) -> None:
        """``child`` created or resumed ``thread_id``: it owns it now."""
        self._owners[thread_id] = child
        child.threads.add(thread_id)

    def disown(self, thread_id: str) -> None:
        owner = self._owners.pop(thread_id, None)
        if owner is not None:
            owner.threads.discard(thread_id)
            self.pool.notify_load_changed()  # what a child holds is part of its state
        self._totals.pop(thread_id, None)
        self._last_used.pop(thread_id, None)

    def turn_ended(self, child: Child, thread_id: str, total: TokenCounts | None) -> None:
        """A turn on ``thread_id``, owned by ``child``, is over; ``total`` is
        the thread's token total after it, if codex reported one."""
        self._last_used[thread_id] = trio.current_time()
        if total is not None:
            self._totals[thread_id] = total
        if len(child.threads) > self.max_per_child:
            self._sweep_soon.set()

    async def settle_owner(self, thread_id: str, *, wait_s: float) -> Child | None:
        """The owner a turn on ``thread_id`` must run on; None when the
        thread has no owner (any more) and must be resumed where there is room.

        An owner that is draining (or being replaced) lets go of the thread.
        One that could not (it is dying, or hung) is waited for, up to
        ``wait_s``: codex frees the thread when the process exits.
        """
        owner = self._owners.get(thread_id)
        if (
            owner is not None
            and not owner.usable
            and owner.state is not ChildState.STOPPED
            and await self._release_held(thread_id)
        ):
            owner = None
        if owner is not None and owner.stopping:
            with trio.move_on_after(wait_s):
                while owner.state is not ChildState.STOPPED:
                    await self.pool.wait_changed()
        if owner is not None and owner.state is ChildState.STOPPED:
            self.disown(thread_id)
            owner = None
        return owner

    @asynccontextmanager
    async def gate(self, thread_id: str | None) -> AsyncIterator[None]:
        """Hold ``thread_id`` for one turn (a None thread: a fresh one, nothing to hold)."""
        if thread_id is None:
            yield
            return
        async with self._locks.hold(thread_id):
            yield

    async def unsubscribe(self, child: Child, thread_id: str, *, wait_closed: bool) -> bool:
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

    async def release(self, thread_id: str) -> bool:
        """Unload an owned thread that has no turn running; its next turn
        resumes it on whichever child has room. False if it could not be
        released now (a turn holds it, or its child does not answer)."""
        if self._locks.locked(thread_id):
            return False
        async with self._locks.hold(thread_id):
            return await self._release_held(thread_id)

    async def _release_held(self, thread_id: str) -> bool:
        owner = self._owners.get(thread_id)
        if owner is None:
            return True
        if await self.unsubscribe(owner, thread_id, wait_closed=True):
            self.disown(thread_id)
            return True
        return False

    async def keep_released(self) -> None:
        """Sweep every so often, and at once when a child holds more than
        ``max_per_child`` threads; until cancelled."""
        interval = min(60.0, self.idle_release_s / 4)
        while True:
            with trio.move_on_after(interval):
                await self._sweep_soon.wait()
            self._sweep_soon = trio.Event()
            await self.sweep()

    async def sweep(self) -> None:
        """Release the threads nobody needs loaded (see the class docstring)."""
        now = trio.current_time()
        doomed: list[str] = []
        per_child: dict[Child, list[str]] = {}
        for thread_id, owner in list(self._owners.items()):
            if owner.state is ChildState.STOPPED:
                self.disown(thread_id)  # gone with its child; resumed elsewhere when used
            elif now - self._last_used.get(thread_id, now) >= self.idle_release_s:
                doomed.append(thread_id)
            else:
                per_child.setdefault(owner, []).append(thread_id)
        for threads in per_child.values():
            extra = len(threads) - self.max_per_child
            if extra > 0:
                threads.sort(key=lambda t: self._last_used.get(t, now))
                doomed.extend(threads[:extra])
        for thread_id in doomed:
            await self.release(thread_id)
