"""One fair lock per key, kept only while someone holds or waits for it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class _Gate:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()  # fair: waiters go in arrival order
        self.users = 0


class KeyedLocks:
    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}

    def locked(self, key: str) -> bool:
        gate = self._gates.get(key)
        return gate is not None and gate.lock.locked()

    @asynccontextmanager
    async def hold(self, key: str, *, timeout_s: float = math.inf) -> AsyncIterator[bool]:
        """Hold ``key``'s lock; yields False (not holding it) after ``timeout_s``."""
        gate = self._gates.setdefault(key, _Gate())
        gate.users += 1
        try:
            acquired = False
            with trio.move_on_after(timeout_s):
                await gate.lock.acquire()
                acquired = True
            if not acquired:
                yield False
                return
            try:
                yield True
            finally:
                gate.lock.release()
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[key]
