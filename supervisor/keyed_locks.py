"""One fair lock per key, kept only while someone holds or waits for it."""

from __future__ import annotations

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
    async def hold(self, key: str) -> AsyncIterator[None]:
        gate = self._gates.setdefault(key, _Gate())
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[key]
