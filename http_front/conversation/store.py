"""Where conversation → thread mappings live: SQLite (embedded) or Redis.

Both stores keep, per conversation key, a :class:`Record`: the codex thread
and the signatures of the messages that thread has seen. Both expire records
``ttl_s`` after their last write and pass the same contract tests.
``open_store(url)`` picks one: ``sqlite:///path/to/file.sqlite3`` or
``redis://host:port/db``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import attrs
import cattrs
import orjson
import trio

_converter = cattrs.Converter()


@attrs.frozen
class Record:
    thread_id: str
    #: Signatures of the messages the thread has seen, in order.
    seen: tuple[str, ...] = ()
    #: The thread's turns: (codex turn id, how many of ``seen`` came before it),
    #: so an edit or a regeneration can roll the thread back to a turn.
    turns: tuple[tuple[str, int], ...] = ()

    def encode(self) -> bytes:
        return orjson.dumps(_converter.unstructure(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> Record:
        record: Record = _converter.structure(orjson.loads(raw), cls)
        return record


class StoreError(Exception):
    pass


class ConversationStore(Protocol):
    """Used as ``async with store:`` by its owner, around all its users."""

    async def __aenter__(self) -> ConversationStore: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def get(self, key: str) -> Record | None: ...

    async def put(self, key: str, record: Record) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def aclose(self) -> None: ...


class SQLiteStore:
    """One SQLite file in WAL mode, used from Trio through worker threads."""

    def __init__(self, path: Path, *, prefix: str = "", ttl_s: float = 30 * 86400) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS conversations ("
            " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL)"
        )

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    async def get(self, key: str) -> Record | None:
        rows = await trio.to_thread.run_sync(
            self._run,
            "SELECT value FROM conversations WHERE key = ? AND expires_at > ?",
            (self.prefix + key, time.time()),
        )
        return Record.decode(rows[0][0]) if rows else None

    async def put(self, key: str, record: Record) -> None:
        await trio.to_thread.run_sync(
            self._run,
            "INSERT INTO conversations (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at",
            (self.prefix + key, record.encode(), time.time() + self.ttl_s),
        )

    async def delete(self, key: str) -> None:
        await trio.to_thread.run_sync(
            self._run, "DELETE FROM conversations WHERE key = ?", (self.prefix + key,)
        )

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore:
    """Redis through coredis (which runs on Trio); several instances may share it."""

    def __init__(self, url: str, *, prefix: str = "", ttl_s: float = 30 * 86400) -> None:
        import coredis

        # coredis wants its connection pool entered by the task that owns it,
        # before other tasks share it: the service does ``async with store``.
        self._client: Any = coredis.Redis.from_url(url)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._entered = False

    async def __aenter__(self) -> RedisStore:
        await self._client.__aenter__()
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get(self, key: str) -> Record | None:
        raw = await self._client.get(self.prefix + key)
        return Record.decode(raw) if raw is not None else None

    async def put(self, key: str, record: Record) -> None:
        await self._client.set(self.prefix + key, record.encode(), ex=max(1, int(self.ttl_s)))

    async def delete(self, key: str) -> None:
        await self._client.delete([self.prefix + key])

    async def aclose(self) -> None:
        if self._entered:
            self._entered = False
            await self._client.__aexit__(None, None, None)


def open_store(url: str, *, prefix: str = "codex-bridge:", ttl_s: float = 30 * 86400) -> Any:
    """A store for ``url``; raises :class:`StoreError` for an unknown scheme."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite://") :]), prefix=prefix, ttl_s=ttl_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, prefix=prefix, ttl_s=ttl_s)
    raise StoreError(f"unsupported state_url {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
