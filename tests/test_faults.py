"""Faults an adversarial run found: hung children, leaks, kill storms, busy
conversations, silent streams. Fake children (tests/fake_app_server.py) play
the misbehaving codex; real time is used where real processes are stopped or
killed, with deadlines far below what the defects cost."""

from __future__ import annotations

import gc
import math
import os
import signal
import socket
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from supervisor import FailureKind, Turn, TurnEnded, TurnRequest
from supervisor.child import Child, ChildState
from supervisor.multiplexer import TurnMultiplexer
from supervisor.outcome import InputTooLarge
from supervisor.pool import Pool, PoolPolicy
from tests.helpers import (
    LineLog,
    chat_body,
    collect,
    content_of,
    eventually,
    fake,
    make_settings,
    running_service,
    sse_events,
    start_serve,
    state_of,
)

FAST_LIVENESS = {"liveness_interval_s": 0.3, "liveness_timeout_s": 0.5}


@contextmanager
def stopped(pid: int | None) -> Iterator[None]:
    """SIGSTOP a process for the block (SIGCONT after, in case it still lives)."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# -- a silent child under a streaming request -----------------------------------------------


async def test_streaming_turn_on_a_silent_child_ends_at_the_idle_deadline(
    tmp_path: Path,
) -> None:
    """Keepalives re-entered the turn's wait, which restarted its idle timer."""
    settings = make_settings(
        tmp_path, keepalive_interval_s=0.1, turn_idle_timeout_s=1.0, turn_timeout_s=60
    )
    with trio.fail_after(15):
        async with running_service(settings, fake("hang-turn", 1)) as svc:
            start = trio.current_time()
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", model="fake-model")
            )
            took = trio.current_time() - start
    assert 1.0 <= took < 4.0
    assert response.content.count(b": keepalive") >= 5
    events = sse_events(response.content)
    (error,) = [e for e in events if isinstance(e, dict) and "error" in e]
    assert error["error"]["code"] == "timeout"
    assert "sent nothing for 1s" in error["error"]["message"]
    assert events[-1] == "[DONE]"


# -- hung children: liveness, routing, the model list -------------------------------------


async def test_a_hung_idle_child_is_replaced_and_no_request_fails(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pool_size=2, rpc_timeout_s=30, **FAST_LIVENESS)
    with trio.fail_after(20):
        async with running_service(settings, fake("ok", 5, delay_s=0.01)) as svc:
            pool = svc.handle.pool
            victim = pool.children[0]
            results: list[httpx.Response] = []
            with stopped(victim.pid):
                start = trio.current_time()

                async def ask(i: int) -> None:
                    results.append(
                        await svc.client.post(
                            "/v1/chat/completions", json=chat_body(f"q{i}", model="fake-model")
                        )
                    )

                async with trio.open_nursery() as nursery:
                    for i in range(6):
                        nursery.start_soon(ask, i)
                took = trio.current_time() - start
                ready = await svc.client.get("/readyz")
            status = pool.status()
    assert [r.status_code for r in results] == [200] * 6
    assert all(content_of(sse_events(r.content)) == "d0 d1 d2 d3 d4 " for r in results)
    assert took < 5  # not the 30 s of rpc_timeout_s
    assert ready.status_code == 200
    assert victim.state is ChildState.STOPPED
    assert "no answer to a" in (victim.exit_reason or "")  # a probe, or a stuck request
    assert status["children"][0]["name"] != victim.name  # replaced


async def test_models_are_served_while_the_first_child_hangs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pool_size=2, rpc_timeout_s=30, **FAST_LIVENESS)
    with trio.fail_after(20):
        async with running_service(settings, fake("ok")) as svc:
            with stopped(svc.handle.pool.children[0].pid):
                start = trio.current_time()
                response = await svc.client.get("/v1/models")
                took = trio.current_time() - start
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["fake-model"]
    assert took < 1


async def test_a_child_being_killed_takes_no_new_turn() -> None:
    """An interrupt codex never answers gets the child killed: from that moment
    it is out of rotation, and it is gone at once, not after the graceful stop."""
    pool = Pool(2, fake("deaf", stop_grace_s=3.0), policy=PoolPolicy(backoff_initial_s=0.05))
    mux = TurnMultiplexer(pool, interrupt_grace_s=0.3)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            first, other = pool.children
            async with mux.open_turn(TurnRequest("left early")) as turn:
                assert turn.child_name == first.name
            # leaving the turn interrupted it; no answer came: the child is being killed
            assert first.state is ChildState.STOPPING
            assert not first.usable
            async with mux.open_turn(TurnRequest("next")) as turn:
                assert turn.child_name == other.name
            start = trio.current_time()
            while state_of(first) is not ChildState.STOPPED:  # (mypy narrowed .state above)
                await pool.wait_changed()
            assert trio.current_time() - start < 1.5  # SIGKILL at once, not 2 x 3 s of grace
            nursery.cancel_scope.cancel()


# -- restart policy -----------------------------------------------------------------------


async def test_a_kill_storm_does_not_open_the_breaker() -> None:
    policy = PoolPolicy(
        backoff_initial_s=0.2, crash_loop_exits=3, crash_loop_window_s=60, breaker_cooldown_s=100
    )
    pool = Pool(2, fake("ok"), policy=policy)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            for round_ in range(6):
                killed = pool.children
                for child in killed:
                    assert child.pid is not None
                    os.kill(child.pid, signal.SIGKILL)
                start = trio.current_time()
                while any(c in killed or not c.usable for c in pool.children):
                    await pool.wait_changed()
                recovered = trio.current_time() - start
                assert recovered < 2, f"round {round_}: {recovered:.2f}s"
            status = pool.status()
            nursery.cancel_scope.cancel()
    assert [c["breaker"] for c in status["children"]] == ["closed", "closed"]
    assert [c["restarts"] for c in status["children"]] == [6, 6]
    assert pool.healthy


async def test_a_child_that_crashes_right_after_start_still_trips_the_breaker() -> None:
    policy = PoolPolicy(
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        crash_loop_exits=3,
        crash_loop_window_s=60,
        breaker_cooldown_s=100,
    )
    pool = Pool(1, fake("exit-when-ready"), policy=policy)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            while pool.slots_state[0].breaker_open_until is None:
                await pool.wait_changed()
            reason = pool.unavailable_reason()
            nursery.cancel_scope.cancel()
    assert "crash loop (3 exits)" in reason
    assert "exited with code 1" in reason


# -- nothing of a finished turn stays behind ------------------------------------------------


async def test_finished_turns_leave_no_route_and_no_turn_behind() -> None:
    pool = Pool(1, fake("ok"), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool)
    refs: list[weakref.ref[Turn]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            child: Child = pool.children[0]
            for i in range(30):
                async with mux.open_turn(TurnRequest(f"turn {i}")) as turn:
                    await collect(turn)
                refs.append(weakref.ref(turn))
            del turn
            routes = child.client.peer.route_count
            gc.collect()
            alive = sum(ref() is not None for ref in refs)
            nursery.cancel_scope.cancel()
    assert routes == 0
    assert alive == 0


# -- conversations ----------------------------------------------------------------------


def _in_conversation(text: str, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "json": chat_body(text, model="fake-model", **extra),
        "headers": {"X-Conversation-Id": key},
    }


async def test_a_busy_conversation_waits_at_most_queue_timeout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, queue_timeout_s=0.5, turn_idle_timeout_s=60)
    with trio.fail_after(20):
        async with (
            running_service(settings, fake("hang-turn")) as svc,
            svc.client.stream(
                "POST", "/v1/chat/completions", **_in_conversation("1", "c1")
            ) as first,
        ):
            chunks = first.aiter_bytes()
            await chunks.__anext__()  # the first turn runs, and never ends
            start = trio.current_time()
            second = await svc.client.post("/v1/chat/completions", **_in_conversation("2", "c1"))
            took = trio.current_time() - start
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "conversation_busy"
    assert int(second.headers["retry-after"]) >= 1
    assert 0.5 <= took < 3


async def test_a_conversation_moves_to_a_healthy_child_when_its_owner_hangs(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, pool_size=2, rpc_timeout_s=30, **FAST_LIVENESS)
    with trio.fail_after(30):
        async with running_service(settings, fake("ok", 3)) as svc:
            pool = svc.handle.pool
            first = await svc.client.post(
                "/v1/chat/completions", **_in_conversation("one", "c1", stream=False)
            )
            (owner,) = [c for c in pool.children if c.threads]
            (thread,) = owner.threads
            with stopped(owner.pid):
                second = await svc.client.post(
                    "/v1/chat/completions", **_in_conversation("two", "c1", stream=False)
                )
            new_owner = svc.handle.multiplexer.owner(thread)
            assert new_owner is not None
            assert new_owner.usable
    assert first.status_code == 200
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "d0 d1 d2 "
    assert new_owner is not owner


# -- usage of a turn cut short ----------------------------------------------------------------


async def test_usage_counted_by_codex_after_the_cut_reaches_the_client(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, shutdown_grace_s=0.0)
    with trio.fail_after(20):
        body = chat_body("hi", model="fake-model", stream_options={"include_usage": True})
        async with (
            running_service(settings, fake("usage-on-interrupt")) as svc,
            svc.client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            raw = b""
            async for chunk in response.aiter_bytes():
                raw += chunk
                if b"d2 " in raw:
                    svc.handle.shutdown()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    usage = events[-2]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10, 10)
    (error,) = [e for e in events if isinstance(e, dict) and "error" in e]
    assert error["error"]["code"] == "service_shutting_down"
    assert events[-3]["choices"][0]["finish_reason"] == "error"


# -- the body's `user` is an end user, not a conversation -----------------------------------


async def test_requests_of_one_user_are_separate_conversations(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pool_size=1)
    with trio.fail_after(30):
        async with running_service(settings, fake("ok", 5, delay_s=0.2)) as svc:
            results: list[httpx.Response] = []

            async def chat(i: int) -> None:
                body = chat_body(f"chat {i}", model="fake-model", stream=False, user="alice")
                results.append(await svc.client.post("/v1/chat/completions", json=body))

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(chat, i)
            took = trio.current_time() - start
            owned = sum(len(c.threads) for c in svc.handle.pool.children)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert took < 2.5  # in parallel: ~1 s each, not one after another
    assert owned == 0  # ephemeral threads: no conversation was kept for "alice"


# -- a client that stops reading ---------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_client_that_stops_reading_costs_bounded_memory_and_its_turn(
    tmp_path: Path,
) -> None:
    """A flood turn whose client stopped reading: the service's memory stays
    bounded (stream_buffer_bytes) and, once the client has not read for
    client_stall_timeout_s, the connection is cut and the turn interrupted."""
    with trio.fail_after(60):
        process, url = await start_serve(
            tmp_path,
            "ok",
            5_000_000,
            FAKE_DELAY_S="0",
            CODEX_BRIDGE_POOL_SIZE="1",
            CODEX_BRIDGE_CLIENT_STALL_TIMEOUT_S="2",
            CODEX_BRIDGE_STREAM_BUFFER_BYTES=str(1024 * 1024),
        )
        try:
            baseline = _rss_kib(process.pid)
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            body = orjson.dumps(chat_body("flood", model="fake-model"))
            await sock.send(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            first = await sock.recv(4096)  # then it never reads again
            assert first.startswith(b"HTTP/1.1 200")
            peak = baseline
            ended_after: float | None = None
            start = trio.current_time()
            async with httpx.AsyncClient(base_url=url) as admin:
                while trio.current_time() - start < 12:
                    peak = max(peak, _rss_kib(process.pid))
                    status = (await admin.get("/admin/pool")).json()
                    if ended_after is None and status["active_turns"] == 0:
                        ended_after = trio.current_time() - start
                        break
                    await trio.sleep(0.1)
                healthy = (await admin.get("/healthz")).status_code
            sock.close()
        finally:
            process.send_signal(signal.SIGTERM)
            await process.wait()
    grew_mib = (peak - baseline) / 1024
    print(
        f"\nnon-reading client: service RSS {baseline / 1024:.1f} MiB -> peak "
        f"{peak / 1024:.1f} MiB (+{grew_mib:.1f}); turn ended after {ended_after}s"
    )
    assert grew_mib < 24  # 1 MiB of backlog, the parser's churn; not hundreds of MB
    assert ended_after is not None
    assert ended_after < 8  # ~2 s of stall once the window is shut, then the interrupt
    assert healthy == 200


# -- threads nobody needs are released in codex -------------------------------------------


async def loaded_threads(child: Child) -> list[str]:
    result = await child.client.peer.request("thread/loaded/list", {})
    data: list[str] = result["data"]
    return data


async def test_one_off_threads_are_released_after_their_turn() -> None:
    pool = Pool(1, fake("ok"), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            for i in range(10):
                async with mux.open_turn(TurnRequest(f"turn {i}")) as turn:
                    await collect(turn)
            left = await loaded_threads(pool.children[0])
            nursery.cancel_scope.cancel()
    assert left == []


async def test_a_thread_whose_turn_codex_refused_is_released() -> None:
    pool = Pool(1, fake("input-too-large"), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            for _ in range(3):
                with pytest.raises(InputTooLarge):
                    async with mux.open_turn(TurnRequest("far too long")):
                        pass
            left = await loaded_threads(pool.children[0])
            nursery.cancel_scope.cancel()
    assert left == []


async def test_a_drained_childs_idle_thread_moves_to_another_child() -> None:
    """Draining a child no longer holds its conversations' next turns hostage."""
    pool = Pool(2, fake("ok"), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool, queue_timeout_s=5)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("first", ephemeral=False)) as turn:
                await collect(turn)
            thread = turn.thread_id
            owner = mux.owner(thread)
            assert owner is not None
            pool.drain(owner)
            start = trio.current_time()
            async with mux.open_turn(TurnRequest("second", thread_id=thread)) as again:
                events = await collect(again)
            took = trio.current_time() - start
            new_owner = mux.owner(thread)
            on_old = await loaded_threads(owner)
            nursery.cancel_scope.cancel()
    assert again.thread_id == thread
    assert isinstance(events[-1], TurnEnded)
    assert new_owner is not None
    assert new_owner is not owner
    assert on_old == []
    assert took < 1  # not the queue timeout spent waiting for the draining child


async def test_idle_and_surplus_conversation_threads_are_released() -> None:
    pool = Pool(1, fake("ok"), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool, thread_idle_release_s=1.0, max_threads_per_child=2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await nursery.start(mux.run)
            child = pool.children[0]
            threads = []
            for i in range(4):
                async with mux.open_turn(TurnRequest(f"chat {i}", ephemeral=False)) as turn:
                    await collect(turn)
                threads.append(turn.thread_id)
            while len(child.threads) > 2:  # the sweep runs when a child holds too many
                await pool.wait_changed()
            kept = sorted(child.threads)
            assert kept == sorted(threads[2:])  # the least recently used went first
            assert await loaded_threads(child) == kept
            while child.threads:  # then idle ones go too
                await pool.wait_changed()
            assert await loaded_threads(child) == []
            # a released thread's next turn resumes it
            async with mux.open_turn(TurnRequest("again", thread_id=threads[0])) as turn:
                events = await collect(turn)
            nursery.cancel_scope.cancel()
    assert isinstance(events[-1], TurnEnded)
    assert turn.thread_id == threads[0]


async def test_threads_of_a_dead_child_are_forgotten_by_the_sweep() -> None:
    pool = Pool(1, fake("ok"), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("chat", ephemeral=False)) as turn:
                await collect(turn)
            dead = pool.children[0]
            assert dead.pid is not None
            os.kill(dead.pid, signal.SIGKILL)
            while pool.slots[0] is dead or not pool.live:
                await pool.wait_changed()
            assert mux.owner(turn.thread_id) is dead
            await mux._sweep()
            assert mux.owner(turn.thread_id) is None
            nursery.cancel_scope.cancel()


async def test_a_request_left_unanswered_condemns_its_child_without_a_probe(
    tmp_path: Path,
) -> None:
    """No probe is due (60 s), yet the request stuck on a stopped child is
    retried elsewhere once it has waited liveness_timeout_s; meanwhile new
    requests avoid the suspect child."""
    settings = make_settings(
        tmp_path, pool_size=2, rpc_timeout_s=30, liveness_interval_s=60, liveness_timeout_s=2
    )
    with trio.fail_after(20):
        async with running_service(settings, fake("ok", 3)) as svc:
            pool = svc.handle.pool
            victim = pool.children[0]  # the least busy child picked first
            took: dict[str, float] = {}

            async def ask(name: str) -> None:
                start = trio.current_time()
                response = await svc.client.post(
                    "/v1/chat/completions", json=chat_body(name, model="fake-model", stream=False)
                )
                assert response.status_code == 200, response.text
                took[name] = trio.current_time() - start

            with stopped(victim.pid):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, "stuck")
                    await trio.sleep(1.5)  # the stuck request is suspect after 1 s
                    nursery.start_soon(ask, "later")
            # The condemned child's exit is seen a moment after the retry
            # may already have been served by the other child.
            await eventually(lambda: victim.exit_reason is not None)
            reason = victim.exit_reason
    assert 2 <= took["stuck"] < 5  # killed at 2 s, then served by the other child
    assert took["later"] < 1  # never sent to the suspect child
    assert "no answer to a request within 2s" in (reason or "")


async def test_a_turn_too_slow_for_its_consumer_is_stopped_in_codex_at_once() -> None:
    """The consumer is stuck (as one writing to a client that does not read);
    codex is told to stop as soon as the backlog is too big, not when that
    consumer finally leaves the turn."""
    log = LineLog()
    pool = Pool(1, fake("ok", 1_000_000, tap=log), policy=PoolPolicy(liveness_interval_s=math.inf))
    mux = TurnMultiplexer(pool, stream_buffer_bytes=64 * 1024, turn_event_buffer=64)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await nursery.start(mux.run)
            async with mux.open_turn(TurnRequest("flood")) as turn:
                await eventually(lambda: turn.failure_kind is not None)  # nobody reads
                assert turn.failure_kind is FailureKind.CONSUMER_TOO_SLOW
                await eventually(turn.wait_codex_finished_nowait)  # codex stops, consumer or not
                interrupts_while_inside = len(log.sent("turn/interrupt"))
            nursery.cancel_scope.cancel()
    assert interrupts_while_inside == 1
