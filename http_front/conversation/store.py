"""Where conversation → thread mappings live: SQLite (embedded), Redis, or memory.

Every store keeps, per conversation key, a :class:`Record`: the codex thread
and the signatures of the messages that thread has seen. Beside them it keeps
the Responses API's records: per response id a :class:`ResponseRecord` (its
thread and turn, what to replay if the thread is lost, the response object),
and per thread its last turn (see :class:`ResponseRecords`). All expire
``ttl_s`` after their last write, and every store passes the same contract
tests. ``open_store(url)`` picks one: ``sqlite:///path/to/file.sqlite3`` or
``redis://host:port/db``; :class:`MemoryStore` serves an application built
without one (its records go with the process).
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


@attrs.frozen
class ResponseRecord:
    """One response of the Responses API, for ``previous_response_id`` and ``GET``."""

    thread_id: str
    turn_id: str
    #: The id of the chain's first response: it names the chain's workspace.
    chain: str
    #: The response it continued, if any.
    previous: str | None = None
    #: The developer instructions its thread runs with.
    instructions: str | None = None
    #: Its new input and its answer, as Responses input items: with the
    #: chain's earlier records, what a fresh thread is seeded with when codex
    #: cannot continue this one.
    items: tuple[dict[str, Any], ...] = ()
    #: The response object ``GET /v1/responses/{id}`` returns (None: the
    #: client asked for ``store: false``).
    response: dict[str, Any] | None = None

    def encode(self) -> bytes:
        return orjson.dumps(_converter.unstructure(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> ResponseRecord:
        record: ResponseRecord = _converter.structure(orjson.loads(raw), cls)
        return record


class ResponseRecords:
    """The Responses API's records, on any store's raw keyed values.

    A store provides ``_get_raw``, ``_put_raw`` and ``_delete_raw`` over its
    own namespace (apart from the conversations'), with the store's TTL.
    """

    async def _get_raw(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def _put_raw(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    async def _delete_raw(self, key: str) -> bool:
        raise NotImplementedError

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        raw = await self._get_raw("response:" + response_id)
        return ResponseRecord.decode(raw) if raw is not None else None

    async def put_response(self, response_id: str, record: ResponseRecord) -> None:
        await self._put_raw("response:" + response_id, record.encode())

    async def delete_response(self, response_id: str) -> bool:
        """Forget a response; False if there was none."""
        return await self._delete_raw("response:" + response_id)

    async def get_thread_head(self, thread_id: str) -> str | None:
        """The last turn run on a thread by the Responses API."""
        raw = await self._get_raw("thread-head:" + thread_id)
        return raw.decode() if raw is not None else None

    async def put_thread_head(self, thread_id: str, turn_id: str) -> None:
        await self._put_raw("thread-head:" + thread_id, turn_id.encode())


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

    async def get_response(self, response_id: str) -> ResponseRecord | None: ...

    async def put_response(self, response_id: str, record: ResponseRecord) -> None: ...

    async def delete_response(self, response_id: str) -> bool: ...

    async def get_thread_head(self, thread_id: str) -> str | None: ...

    async def put_thread_head(self, thread_id: str, turn_id: str) -> None: ...


class SQLiteStore(ResponseRecords):
    """One SQLite file in WAL mode, used from Trio through worker threads."""

    def __init__(self, path: Path, *, prefix: str = "", ttl_s: float = 30 * 86400) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._writes = 0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS conversations ("
            " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses ("
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

    async def _get_raw(self, key: str) -> bytes | None:
        rows = await trio.to_thread.run_sync(
            self._run,
            "SELECT value FROM responses WHERE key = ? AND expires_at > ?",
            (self.prefix + key, time.time()),
        )
        return bytes(rows[0][0]) if rows else None

    async def _put_raw(self, key: str, value: bytes) -> None:
        now = time.time()
        await trio.to_thread.run_sync(
            self._run,
            "INSERT INTO responses (key, value, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at",
            (self.prefix + key, value, now + self.ttl_s),
        )
        # Expired rows go now and then, so the file stays bounded.
        self._writes += 1
        if self._writes % 256 == 0:
            await trio.to_thread.run_sync(
                self._run, "DELETE FROM responses WHERE expires_at <= ?", (now,)
            )

    async def _delete_raw(self, key: str) -> bool:
        rows = await trio.to_thread.run_sync(
            self._run,
            "DELETE FROM responses WHERE key = ? AND expires_at > ? RETURNING key",
            (self.prefix + key, time.time()),
        )
        return bool(rows)

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore(ResponseRecords):
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

    async def _get_raw(self, key: str) -> bytes | None:
        raw = await self._client.get(self.prefix + key)
        return raw.encode() if isinstance(raw, str) else raw

    async def _put_raw(self, key: str, value: bytes) -> None:
        await self._client.set(self.prefix + key, value, ex=max(1, int(self.ttl_s)))

    async def _delete_raw(self, key: str) -> bool:
        return bool(await self._client.delete([self.prefix + key]))

    async def aclose(self) -> None:
        if self._entered:
            self._entered = False
            await self._client.__aexit__(None, None, None)


class MemoryStore(ResponseRecords):
    """Records in this process's memory, for an application built without a
    store; expired records are dropped as they are met and now and then."""

    def __init__(self, *, ttl_s: float = 30 * 86400) -> None:
        self.ttl_s = ttl_s
        self._values: dict[str, tuple[float, bytes]] = {}
        self._writes = 0

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _live(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[0] <= time.time():
            del self._values[key]
            return None
        return entry[1]

    def _set(self, key: str, value: bytes) -> None:
        self._writes += 1
        if self._writes % 256 == 0:
            now = time.time()
            for stale in [k for k, (expires, _) in self._values.items() if expires <= now]:
                del self._values[stale]
        self._values[key] = (time.time() + self.ttl_s, value)

    async def get(self, key: str) -> Record | None:
        raw = self._live("conversation:" + key)
        return Record.decode(raw) if raw is not None else None

    async def put(self, key: str, record: Record) -> None:
        self._set("conversation:" + key, record.encode())

    async def delete(self, key: str) -> None:
        self._values.pop("conversation:" + key, None)

    async def _get_raw(self, key: str) -> bytes | None:
        return self._live(key)

    async def _put_raw(self, key: str, value: bytes) -> None:
        self._set(key, value)

    async def _delete_raw(self, key: str) -> bool:
        return self._live(key) is not None and self._values.pop(key, None) is not None

    async def aclose(self) -> None:
        pass


def open_store(url: str, *, prefix: str = "codex-bridge:", ttl_s: float = 30 * 86400) -> Any:
    """A store for ``url``; raises :class:`StoreError` for an unknown scheme."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite://") :]), prefix=prefix, ttl_s=ttl_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, prefix=prefix, ttl_s=ttl_s)
    raise StoreError(f"unsupported state_url {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
