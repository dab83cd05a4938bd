"""The Trio JSON-RPC peer: pending table, routing, server requests, child exit."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from bridge.framing import LineFramer
from bridge.log_limit import LogLimiter
from bridge.messages import Notification, ServerRequest
from bridge.peer import JsonRpcPeer, PeerClosed, RpcCallError, ServerRequestRefused


class FakeChild:
    """The far end of the pipe, driven by the test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.framer = LineFramer()
        self.lines: list[dict[str, Any]] = []

    async def read(self) -> dict[str, Any]:
        while not self.lines:
            data = await self.stream.receive_some(65536)
            assert data, "the peer closed its end"
            self.lines += [
                orjson.loads(line) for line in self.framer.feed(data) if isinstance(line, bytes)
            ]
        return self.lines.pop(0)

    async def write(self, obj: Any) -> None:
        await self.stream.send_all(orjson.dumps(obj) + b"\n")

    async def write_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)


@asynccontextmanager
async def connected(**kwargs: Any) -> AsyncIterator[tuple[JsonRpcPeer, FakeChild]]:
    ours, theirs = trio.testing.memory_stream_pair()
    peer = JsonRpcPeer(ours, ours, name="test-child", **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        yield peer, FakeChild(theirs)
        nursery.cancel_scope.cancel()


async def test_request_gets_its_result() -> None:
    async with connected() as (peer, child):
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await peer.request("thread/start", {"cwd": "/w"}))

            nursery.start_soon(call)
            sent = await child.read()
            assert sent == {"id": 1, "method": "thread/start", "params": {"cwd": "/w"}}
            await child.write({"id": 1, "result": {"thread": {"id": "t1"}}})
        assert results == [{"thread": {"id": "t1"}}]
        assert peer.pending_count == 0


async def test_answers_are_matched_by_id_out_of_order() -> None:
    async with connected() as (peer, child):
        results: dict[str, Any] = {}

        async def call(method: str) -> None:
            results[method] = await peer.request(method)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a")
            first = await child.read()
            nursery.start_soon(call, "b")
            second = await child.read()
            await child.write({"id": second["id"], "result": "B"})
            await child.write({"id": first["id"], "result": "A"})
        assert results == {"a": "A", "b": "B"}


async def test_error_reply_raises_rpc_call_error() -> None:
    async with connected() as (peer, child):
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                with pytest.raises(RpcCallError) as info:
                    await peer.request("turn/interrupt")
                assert info.value.code == -32600
                assert info.value.message == "no active turn to interrupt"
                assert "turn/interrupt" in str(info.value)

            nursery.start_soon(call)
            sent = await child.read()
            await child.write(
                {
                    "error": {"code": -32600, "message": "no active turn to interrupt"},
                    "id": sent["id"],
                }
            )
        assert peer.pending_count == 0


async def test_child_exit_fails_every_pending_request() -> None:
    async with connected() as (peer, child):
        failures: list[str] = []

        async def call(method: str) -> None:
            with pytest.raises(PeerClosed) as info:
                await peer.request(method)
            failures.append(str(info.value))

        async with trio.open_nursery() as nursery:
            for method in ("a", "b", "c"):
                nursery.start_soon(call, method)
            for _ in range(3):
                await child.read()
            await child.stream.aclose()  # the child's stdout reaches EOF
        assert len(failures) == 3
        assert all("closed its output" in f for f in failures)
        assert peer.pending_count == 0
        assert peer.closed
        # and nothing new can be started
        with pytest.raises(PeerClosed):
            await peer.request("d")
        assert peer.pending_count == 0


async def test_close_fails_pending_with_the_given_reason() -> None:
    async with connected() as (peer, child):
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                with pytest.raises(PeerClosed, match="killed by SIGKILL"):
                    await peer.request("slow")

            nursery.start_soon(call)
            await child.read()
            peer.close("killed by SIGKILL")
        await peer.wait_closed()


async def test_cancelled_caller_leaves_no_entry_and_late_answer_is_dropped() -> None:
    async with connected() as (peer, child):
        with trio.move_on_after(1) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.request, "forgotten")
                sent = await child.read()
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert peer.pending_count == 0
        await child.write({"id": sent["id"], "result": "late"})
        # the peer still works afterwards
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await peer.request("next"))

            nursery.start_soon(call)
            again = await child.read()
            assert again["id"] != sent["id"]
            await child.write({"id": again["id"], "result": "ok"})
        assert results == ["ok"]


async def test_request_timeout_uses_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (peer, child):
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await peer.request("never-answered", timeout_s=7.5)
        assert trio.current_time() - start == pytest.approx(7.5)
        assert peer.pending_count == 0
        assert (await child.read())["method"] == "never-answered"


async def test_notifications_are_routed_by_thread_id() -> None:
    default: list[Notification] = []
    thread_a: list[Notification] = []
    async with connected(on_notification=default.append) as (peer, child):
        peer.add_route("A", thread_a.append)
        await child.write(
            {"method": "item/agentMessage/delta", "params": {"threadId": "A", "delta": "x"}}
        )
        await child.write(
            {"method": "item/agentMessage/delta", "params": {"threadId": "B", "delta": "y"}}
        )
        await child.write({"method": "configWarning", "params": {"summary": "s"}})
        await trio.testing.wait_all_tasks_blocked()
        peer.remove_route("A")
        await child.write({"method": "turn/completed", "params": {"threadId": "A"}})
        await trio.testing.wait_all_tasks_blocked()
    assert [n.params.get("delta") for n in thread_a] == ["x"]
    assert [n.method for n in default] == [
        "item/agentMessage/delta",
        "configWarning",
        "turn/completed",
    ]


async def test_remove_route_only_removes_the_given_sink() -> None:
    first: list[Notification] = []
    second: list[Notification] = []
    async with connected() as (peer, child):
        peer.add_route("A", first.append)
        peer.add_route("A", second.append)  # a newer owner of the thread
        peer.remove_route("A", first.append)
        await child.write({"method": "m", "params": {"threadId": "A"}})
        await trio.testing.wait_all_tasks_blocked()
    assert not first
    assert len(second) == 1


class _Sink:
    def __init__(self) -> None:
        self.seen: list[Notification] = []

    def on_notification(self, notification: Notification) -> None:
        self.seen.append(notification)


async def test_remove_route_with_the_same_bound_method_removes_it() -> None:
    """``sink.on_notification`` is a new object at every access: equal, not identical."""
    sink = _Sink()
    async with connected() as (peer, child):
        peer.add_route("A", sink.on_notification)
        assert peer.route_count == 1
        peer.remove_route("A", sink.on_notification)
        assert peer.route_count == 0
        await child.write({"method": "m", "params": {"threadId": "A"}})
        await trio.testing.wait_all_tasks_blocked()
    assert sink.seen == []


async def test_remove_route_keeps_a_newer_sinks_bound_method() -> None:
    old, new = _Sink(), _Sink()
    async with connected() as (peer, child):
        peer.add_route("A", old.on_notification)
        peer.add_route("A", new.on_notification)  # a newer owner of the thread
        peer.remove_route("A", old.on_notification)
        assert peer.route_count == 1
        await child.write({"method": "m", "params": {"threadId": "A"}})
        await trio.testing.wait_all_tasks_blocked()
    assert old.seen == []
    assert len(new.seen) == 1


async def test_garbage_lines_are_counted_and_skipped() -> None:
    seen: list[Notification] = []
    async with connected(on_notification=seen.append, max_line_bytes=64) as (peer, child):
        await child.write_raw(b"not json\n[1,2]\n" + b"x" * 100 + b"\n")
        await child.write({"method": "still/alive", "params": {}})
        await trio.testing.wait_all_tasks_blocked()
    assert [n.method for n in seen] == ["still/alive"]
    assert peer.protocol_errors == 3


async def test_a_flood_of_garbage_lines_is_not_a_flood_of_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Notification] = []
    with caplog.at_level(logging.WARNING, logger="bridge.peer"):
        async with connected(on_notification=seen.append) as (peer, child):
            await child.write_raw(b"this is not json\n" * 2000)
            await child.write({"method": "still/alive", "params": {}})
            await trio.testing.wait_all_tasks_blocked()
            assert peer.protocol_errors == 2000
    warnings = [r for r in caplog.records if r.name == "bridge.peer"]
    assert [n.method for n in seen] == ["still/alive"]
    assert len(warnings) == 6  # five of the lines, then one summary of the rest
    assert "not JSON-RPC" in warnings[0].getMessage()
    assert "1995 more line(s)" in warnings[-1].getMessage()


async def test_server_request_is_answered_by_the_handler() -> None:
    requests: list[ServerRequest] = []

    async def handler(request: ServerRequest) -> Any:
        requests.append(request)
        return {"decision": "decline"}

    async with connected(on_server_request=handler) as (_peer, child):
        await child.write(
            {
                "method": "item/commandExecution/requestApproval",
                "id": 0,
                "params": {"threadId": "t"},
            }
        )
        reply = await child.read()
    assert reply == {"id": 0, "result": {"decision": "decline"}}
    assert requests[0].method == "item/commandExecution/requestApproval"


async def test_refused_server_request_gets_an_error_reply() -> None:
    async def handler(request: ServerRequest) -> Any:
        raise ServerRequestRefused("not supported here")

    async with connected(on_server_request=handler) as (_peer, child):
        await child.write({"method": "item/tool/requestUserInput", "id": 4, "params": {}})
        reply = await child.read()
    assert reply == {"id": 4, "error": {"code": -32603, "message": "not supported here"}}


async def test_failing_handler_gets_an_error_reply() -> None:
    async def handler(request: ServerRequest) -> Any:
        raise RuntimeError("handler bug")

    async with connected(on_server_request=handler) as (_peer, child):
        await child.write({"method": "x", "id": 1, "params": {}})
        reply = await child.read()
    assert reply["error"]["message"] == "handler bug"


async def test_slow_handler_is_answered_with_an_error_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: ServerRequest) -> Any:
        await trio.sleep_forever()

    async with connected(on_server_request=handler, server_request_timeout_s=30) as (_peer, child):
        start = trio.current_time()
        await child.write({"method": "item/fileChange/requestApproval", "id": 2, "params": {}})
        reply = await child.read()
        assert trio.current_time() - start == pytest.approx(30)
    assert reply["id"] == 2
    assert "no decision in time" in reply["error"]["message"]


async def test_concurrent_writes_never_interleave() -> None:
    async with connected() as (peer, child):
        big = "x" * 200_000
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(peer.notify, "n", {"i": i, "pad": big})
            seen = [await child.read() for _ in range(20)]
        assert sorted(m["params"]["i"] for m in seen) == list(range(20))
        assert all(m["params"]["pad"] == big for m in seen)


_ECHO_CHILD = r"""
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "die":
        sys.exit(3)
    if msg.get("method") == "hang":
        continue
    print(json.dumps({"id": msg["id"], "result": msg["method"]}), flush=True)
"""


async def test_real_child_process_exit_fails_pending_requests() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-u", "-c", _ECHO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    peer = JsonRpcPeer(process.stdin, process.stdout, name="echo")
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(peer.run)
                assert await peer.request("hello") == "hello"

                async def hang() -> None:
                    with pytest.raises(PeerClosed):
                        await peer.request("hang")

                nursery.start_soon(hang)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(PeerClosed):
                    await peer.request("die")
                assert await process.wait() == 3
        assert peer.pending_count == 0
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def test_log_limiter_lets_a_burst_through_per_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("tests.limited")
    limiter = LogLimiter(logger, burst=2, window_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tests.limited"):
        for i in range(5):
            limiter.log(logging.INFO, "line %d", i)
        now[0] = 10.0  # a new window: the summary, then a fresh burst
        limiter.log(logging.INFO, "line %d", 5)
        limiter.flush()  # nothing suppressed in this window yet
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "3 more line(s) like the above were not logged in the last 10s",
        "line 5",
    ]


_LENGTH_CHILD = r"""
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    print(json.dumps({"id": msg["id"], "result": len(msg["params"]["pad"])}), flush=True)
"""


async def test_lines_larger_than_the_pipe_reach_a_real_child_whole() -> None:
    """A write the pipe takes only in part (its buffer is 64 KiB) goes on
    from where it stopped, before any other line: concurrent requests of
    lines far larger than the buffer all arrive intact."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-u", "-c", _LENGTH_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    peer = JsonRpcPeer(process.stdin, process.stdout, name="lengths")
    sizes = [1, 70_000, 1_000_000, 3, 300_000, 65_536, 2_000_000, 10]
    results: dict[int, int] = {}
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(peer.run)

                async def ask(size: int) -> None:
                    results[size] = await peer.request("len", {"pad": "y" * size})

                async with trio.open_nursery() as asking:
                    for size in sizes:
                        asking.start_soon(ask, size)
                nursery.cancel_scope.cancel()
        assert results == {size: size for size in sizes}
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
