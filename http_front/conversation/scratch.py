"""Scratch directories: one of its own for each request that keeps nothing.

A keyless request (and a Responses one-off) runs in a fresh directory that
no other request can see, removed once its turn is over. Making and
removing one costs a couple of file-system calls each; on a request's own
path that was a worker thread's round trip, and the thread's work competing
for the interpreter with the next request's first byte. So directories are
made ahead, a small stock of empty ones kept ready, and those given back
are removed in batches, all in one worker-thread call per round, by
:meth:`ScratchDirs.run`. Without that task running (a library user, tests),
:meth:`take` makes a directory at once and :meth:`give_back` removes it at
once, as before.
"""

from __future__ import annotations

import collections
import logging
import shutil
import uuid
from pathlib import Path

import trio

log = logging.getLogger(__name__)


class ScratchDirs:
    def __init__(self, root: Path, *, stock: int = 16, batch_s: float = 0.25) -> None:
        self.root = root
        #: Empty directories made ahead, at most this many.
        self.stock = stock
        #: How long given-back directories gather before one round removes them.
        self.batch_s = batch_s
        self._ready: collections.deque[Path] = collections.deque()
        self._given_back: list[Path] = []
        self._work = trio.Event()
        self._running = False

    @property
    def ready(self) -> int:
        """Empty directories waiting to be taken."""
        return len(self._ready)

    @property
    def to_remove(self) -> int:
        """Directories given back and not removed yet."""
        return len(self._given_back)

    def take(self) -> Path:
        """An empty directory no one else has (made now if none is ready)."""
        if self._running:
            self._work.set()
        if self._ready:
            return self._ready.popleft()
        # A local mkdir takes microseconds; a worker thread's round trip
        # would cost more than the call.
        return self._make()

    async def give_back(self, path: Path) -> None:
        """``path`` and all in it are no longer needed: removed soon (at once
        if nothing removes them in the background)."""
        if self._running:
            self._given_back.append(path)
            self._work.set()
            return
        with trio.move_on_after(10, shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, path, True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the stock and remove what was given back, until cancelled;
        then remove the stock and whatever is left."""
        self._running = True
        try:
            self._ready.extend(await trio.to_thread.run_sync(self._round, [], self.stock))
            task_status.started()
            while True:
                await self._work.wait()
                self._work = trio.Event()
                await trio.sleep(self.batch_s)  # let a batch gather
                given_back, self._given_back = self._given_back, []
                wanted = max(self.stock - len(self._ready), 0)
                self._ready.extend(await trio.to_thread.run_sync(self._round, given_back, wanted))
        finally:
            self._running = False
            leftovers = [*self._given_back, *self._ready]
            self._given_back.clear()
            self._ready.clear()
            with trio.move_on_after(10, shield=True):
                await trio.to_thread.run_sync(self._round, leftovers, 0)

    def _make(self) -> Path:
        path = self.root / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def _round(self, remove: list[Path], make: int) -> list[Path]:
        """In a worker thread: remove ``remove``, make ``make`` directories."""
        for path in remove:
            shutil.rmtree(path, ignore_errors=True)
        made: list[Path] = []
        try:
            for _ in range(make):
                made.append(self._make())
        except OSError as exc:  # take() makes its own, and says why if it cannot
            log.warning("cannot make scratch directories under %s: %s", self.root, exc)
        return made
