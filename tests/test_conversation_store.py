"""The same contract for both conversation stores; Redis is a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from http_front.conversation.store import (
    MemoryStore,
    Record,
    RedisStore,
    ResponseRecord,
    SQLiteStore,
    StoreError,
    open_store,
)
from tests.helpers import redis_url  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> AsyncIterator[Any]:
    prefix = f"test-{tmp_path.name}:"
    if request.param == "sqlite":
        made: Any = SQLiteStore(tmp_path / "state" / "c.sqlite3", prefix=prefix, ttl_s=60)
    else:
        made = RedisStore(redis_url, prefix=prefix, ttl_s=60)
    async with made:
        yield made


async def test_get_put_delete(store: Any) -> None:
    assert await store.get("chat-1") is None
    record = Record("thread-1", ("a", "b"))
    await store.put("chat-1", record)
    assert await store.get("chat-1") == record
    await store.put("chat-1", Record("thread-2", ("a", "b", "c")))
    assert await store.get("chat-1") == Record("thread-2", ("a", "b", "c"))
    await store.delete("chat-1")
    assert await store.get("chat-1") is None
    await store.delete("never-there")


async def test_keys_are_independent(store: Any) -> None:
    await store.put("x", Record("tx"))
    await store.put("y", Record("ty"))
    assert (await store.get("x"), await store.get("y")) == (Record("tx"), Record("ty"))


async def test_concurrent_writers_leave_one_whole_record(store: Any) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store.put, "busy", Record(f"t{i}", (str(i),) * 3))
    got = await store.get("busy")
    assert got is not None
    n = got.thread_id[1:]
    assert got.seen == (n, n, n)


async def test_records_expire(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    for made in (
        SQLiteStore(tmp_path / "e.sqlite3", ttl_s=1),
        RedisStore(redis_url, prefix=f"exp-{tmp_path.name}:", ttl_s=1),
    ):
        async with made:
            await made.put("k", Record("t"))
            assert await made.get("k") == Record("t")
            await trio.sleep(1.2)
            assert await made.get("k") is None


async def test_sqlite_survives_reopening_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    first = SQLiteStore(path)
    await first.put("k", Record("t", ("x",)))
    await first.aclose()
    second = SQLiteStore(path)
    assert await second.get("k") == Record("t", ("x",))
    mode = second._db.execute("PRAGMA journal_mode").fetchone()[0]
    await second.aclose()
    assert mode == "wal"


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.sqlite3"), SQLiteStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(StoreError, match="unsupported state_url"):
        open_store("mysql://nope")


@pytest.fixture(params=["sqlite", "redis", "memory"])
async def any_store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> AsyncIterator[Any]:
    prefix = f"resp-{tmp_path.name}:"
    if request.param == "sqlite":
        made: Any = SQLiteStore(tmp_path / "r.sqlite3", prefix=prefix, ttl_s=60)
    elif request.param == "redis":
        made = RedisStore(redis_url, prefix=prefix, ttl_s=60)
    else:
        made = MemoryStore(ttl_s=60)
    async with made:
        yield made


async def test_response_records_and_thread_heads(any_store: Any) -> None:
    record = ResponseRecord(
        "thread-1",
        "turn-1",
        "resp_1",
        previous=None,
        instructions="Be brief.",
        items=(
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ),
        response={"id": "resp_1", "object": "response", "output": []},
    )
    assert await any_store.get_response("resp_1") is None
    await any_store.put_response("resp_1", record)
    assert await any_store.get_response("resp_1") == record
    assert await any_store.get_thread_head("thread-1") is None
    await any_store.put_thread_head("thread-1", "turn-1")
    await any_store.put_thread_head("thread-1", "turn-2")
    assert await any_store.get_thread_head("thread-1") == "turn-2"
    # a conversation's key of the same name is another record
    assert await any_store.get("resp_1") is None
    assert await any_store.delete_response("resp_1") is True
    assert await any_store.get_response("resp_1") is None
    assert await any_store.delete_response("resp_1") is False


async def test_response_records_expire(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    record = ResponseRecord("t", "u", "c")
    for made in (
        SQLiteStore(tmp_path / "x.sqlite3", ttl_s=1),
        RedisStore(redis_url, prefix=f"rexp-{tmp_path.name}:", ttl_s=1),
        MemoryStore(ttl_s=1),
    ):
        async with made:
            await made.put_response("r", record)
            assert await made.get_response("r") == record
            await trio.sleep(1.2)
            assert await made.get_response("r") is None
            assert await made.delete_response("r") is False


async def test_redis_response_records_survive_a_new_client(redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    prefix = f"restart-{tmp_path.name}:"
    async with RedisStore(redis_url, prefix=prefix) as first:
        await first.put_response("r", ResponseRecord("t", "u", "c"))
        await first.put_thread_head("t", "u")
    async with RedisStore(redis_url, prefix=prefix) as second:
        assert await second.get_response("r") == ResponseRecord("t", "u", "c")
        assert await second.get_thread_head("t") == "u"
