"""Issue-3 behaviour: breaker, recycling, ownership, retries, admin, shutdown."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from bridge.protocol import AgentMessageDelta, TurnStatus
from codex_bridge.systemd import Notifier
from http_front.admin import AdminRoutes
from http_front.errors import ApiError
from http_front.response import Exchange
from http_front.telemetry import Telemetry
from supervisor import Supervisor, TurnEnded
from supervisor.child import ChildLaunch, ChildState
from supervisor.multiplexer import TurnMultiplexer
from supervisor.outcome import NoChildAvailable, Overloaded
from supervisor.pool import Pool, PoolPolicy
from supervisor.turn import TurnRequest
from tests.helpers import (
    LineLog,
    chat_body,
    collect,
    content_of,
    fake,
    free_port,
    make_settings,
    running_service,
    sse_events,
    start_serve,
)

# -- crash-loop breaker and backoff, on virtual time ------------------------------------


async def test_backoff_then_breaker_then_half_open(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A binary that cannot even start: pure supervision logic, exact virtual times."""
    monkeypatch.setattr("supervisor.pool.random.uniform", lambda a, b: 1.0)  # no jitter
    launch = ChildLaunch(argv=("/nonexistent/codex", "app-server"), env={})
    policy = PoolPolicy(
        backoff_initial_s=1,
        backoff_max_s=4,
        crash_loop_exits=4,
        crash_loop_window_s=60,
        breaker_cooldown_s=100,
        # No periodic timer: spawning runs in a real thread, and the autojump
        # clock would race a periodic timer's virtual time ahead meanwhile.
        liveness_interval_s=math.inf,
    )
    pool = Pool(1, launch, policy=policy)
    attempts: list[float] = []
    breaker_seen: list[tuple[float, str, bool, str]] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        seen = -1
        while len(attempts) < 7:
            slot = pool.slots_state[0]
            now = trio.current_time() - start
            if slot.child is not None and slot.generation != seen:
                seen = slot.generation
                attempts.append(now)
            status = pool.status()["children"][0]
            breaker_seen.append((now, status["breaker"], pool.healthy, pool.unavailable_reason()))
            await pool.wait_changed()
        nursery.cancel_scope.cancel()
    opened = [entry for entry in breaker_seen if entry[1] == "open"]
    assert opened
    assert opened[0][0] == 7
    assert not opened[0][2]  # every slot held by its breaker: unhealthy
    assert "crash loop (4 exits)" in opened[0][3]
    # exits at 0, 1, 3, 7 (backoff 1, 2, 4) open the breaker at 7 for 100 s;
    # the half-open try at 107 fails and reopens it at once: next try at 207
    assert attempts == [0, 1, 3, 7, 107, 207, 307]


# -- recycling --------------------------------------------------------------------------


async def test_child_is_recycled_after_n_turns() -> None:
    pool = Pool(1, fake("ok"), policy=PoolPolicy(recycle_after_turns=2))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            first = pool.children[0]
            for _ in range(2):
                async with mux.open_turn(TurnRequest("hi")) as turn:
                    await collect(turn)
            while pool.slots[0] is first or not pool.live:
                await pool.wait_changed()
            assert pool.last_exit_reason[0] == "recycled after 2 turns"
            assert first.planned_stop
            nursery.cancel_scope.cancel()


async def test_child_is_recycled_above_its_rss_limit() -> None:
    policy = PoolPolicy(recycle_rss_mib=0.001, monitor_interval_s=0.05)
    pool = Pool(1, fake("ok"), policy=policy)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            first = pool.children[0]
            while pool.slots[0] is first:
                await pool.wait_changed()
            assert "MiB RSS" in (pool.last_exit_reason[0] or "")
            nursery.cancel_scope.cancel()


async def test_draining_child_finishes_its_turn_and_new_turns_go_elsewhere() -> None:
    pool = Pool(2, fake("ok", deltas=6, delay_s=0.05), policy=PoolPolicy())
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            a, b = pool.children
            async with mux.open_turn(TurnRequest("long")) as running:
                assert running.child_name == a.name
                replaced = pool.restart(a, "test")
                async with mux.open_turn(TurnRequest("new")) as other:
                    assert other.child_name == b.name  # not the draining one
                    await collect(other)
                events = await collect(running)
            await replaced.wait()
            nursery.cancel_scope.cancel()
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].outcome.status is TurnStatus.COMPLETED  # the drained turn was not cut
    assert sum(isinstance(e, AgentMessageDelta) for e in events) == 6


# -- hung children and overload ---------------------------------------------------------


async def test_child_that_ignores_interrupt_is_killed_and_replaced() -> None:
    pool = Pool(1, fake("deaf"), policy=PoolPolicy(backoff_initial_s=0.01))
    mux = TurnMultiplexer(pool, interrupt_grace_s=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            first = pool.children[0]
            # the deaf fake never completes its turns, nor answers turn/interrupt
            async with mux.open_turn(TurnRequest("x")) as turn:
                await turn.next_event()
            while pool.slots[0] is first or not pool.live:
                await pool.wait_changed()
            assert "no answer to turn/interrupt" in (pool.last_exit_reason[0] or "")
            assert not first.planned_stop
            nursery.cancel_scope.cancel()


async def test_overload_is_retried_with_backoff(tmp_path: Path) -> None:
    log = LineLog()
    pool = Pool(1, fake("overloaded-once", state=str(tmp_path / "overloaded"), tap=log))
    mux = TurnMultiplexer(pool, overload_backoff_s=0.01)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("hi")) as turn:
                events = await collect(turn)
            nursery.cancel_scope.cancel()
    assert len(log.sent("thread/start")) == 2
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].outcome.status is TurnStatus.COMPLETED


async def test_persistent_overload_becomes_429() -> None:
    pool = Pool(1, fake("overloaded"))
    mux = TurnMultiplexer(pool, overload_backoff_s=0.01, overload_retries=2)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            with pytest.raises(Overloaded, match="codex is overloaded"):
                async with mux.open_turn(TurnRequest("hi")):
                    pass
            assert pool.children[0].load == 0
            nursery.cancel_scope.cancel()


# -- thread ownership -------------------------------------------------------------------


async def test_thread_stays_on_its_owner_and_moves_when_it_dies() -> None:
    pool = Pool(2, fake("ok"), policy=PoolPolicy(backoff_initial_s=0.01))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("one", ephemeral=False)) as first:
                await collect(first)
            thread = first.thread_id
            owner = mux.owner(thread)
            assert owner is not None
            assert thread in owner.threads
            # load the other child... the thread still goes to its owner
            for _ in range(3):
                async with mux.open_turn(TurnRequest("again", thread_id=thread)) as turn:
                    await collect(turn)
                    assert turn.child_name == owner.name
            assert owner.pid is not None
            os.kill(owner.pid, signal.SIGKILL)
            while owner.state is not ChildState.STOPPED:
                await pool.wait_changed()
            async with mux.open_turn(TurnRequest("after", thread_id=thread)) as moved:
                events = await collect(moved)
            assert moved.child_name != owner.name
            assert moved.thread_id == thread
            new_owner = mux.owner(thread)
            assert new_owner is not None
            assert new_owner.name == moved.child_name
            nursery.cancel_scope.cancel()
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].outcome.status is TurnStatus.COMPLETED


async def test_turns_on_one_thread_never_overlap() -> None:
    log = LineLog()
    pool = Pool(1, fake("ok", delay_s=0.05, deltas=4, tap=log))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("one", ephemeral=False)) as first:
                await collect(first)
            thread = first.thread_id

            async def turn_on_thread(text: str) -> None:
                async with mux.open_turn(TurnRequest(text, thread_id=thread)) as turn:
                    await collect(turn)

            async with trio.open_nursery() as inner:
                for text in ("two", "three", "four"):
                    inner.start_soon(turn_on_thread, text)
            nursery.cancel_scope.cancel()
    # on the wire: each turn/start only after the previous turn/completed
    order = [
        "start" if d == "out" else "done"
        for d, m in log.lines
        if m.get("method") in ("turn/start", "turn/completed")
    ]
    assert order == ["start", "done"] * 4


# -- HTTP: transparent retry, admin, readiness -----------------------------------------------


async def test_child_dying_before_any_output_is_retried_transparently(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pool_size=2)
    with trio.fail_after(30):
        async with running_service(
            settings, fake("crash-once", state=str(tmp_path / "crashed"), deltas=4)
        ) as svc:
            streamed = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", model="fake-model")
            )
            restarts = sum(svc.handle.pool.restarts)
    events = sse_events(streamed.content)
    assert content_of(events) == "d0 d1 d2 d3 "
    assert not [e for e in events if isinstance(e, dict) and "error" in e]
    assert events[-1] == "[DONE]"
    assert restarts >= 1


async def test_admin_status_restart_drain(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pool_size=2)
    with trio.fail_after(30):
        async with running_service(settings, fake("ok")) as svc:
            client = svc.client
            status = (await client.get("/admin/pool")).json()
            assert status["ready"] == 2
            child = status["children"][0]
            assert {
                "name",
                "pid",
                "state",
                "load",
                "turns_served",
                "threads_owned",
                "rss_mib",
                "uptime_s",
                "restarts",
                "last_exit_reason",
                "breaker",
            } <= set(child)
            assert child["state"] == "idle"
            assert child["rss_mib"] > 0
            old_pid = child["pid"]

            restarted = await client.post(f"/admin/children/{child['name']}/restart")
            assert restarted.status_code == 202
            pool = svc.handle.pool
            while pool.restarts[0] == 0 or not pool.slots[0] or not pool.slots[0].usable:
                await pool.wait_changed()
            status = (await client.get("/admin/pool")).json()
            assert status["children"][0]["pid"] != old_pid
            assert status["children"][0]["last_exit_reason"] == "restarted by an operator"

            name = status["children"][1]["name"]
            drained = await client.post(f"/admin/children/{name}/drain")
            assert drained.json()["children"][1]["state"] == "draining"
            for _ in range(3):
                done = await client.post(
                    "/v1/chat/completions", json=chat_body("x", model="fake-model", stream=False)
                )
                assert done.status_code == 200
            assert pool.children[1].turns_served == 0
            await client.post(f"/admin/children/{name}/undrain")
            assert pool.children[1].usable

            assert (await client.post("/admin/pool/drain")).status_code == 200
            refused = await client.post(
                "/v1/chat/completions", json=chat_body("x", model="fake-model")
            )
            ready = await client.get("/readyz")
            assert refused.status_code == 503
            assert "drained by an operator" in refused.json()["error"]["message"]
            assert ready.status_code == 503
            await client.post("/admin/pool/undrain")
            assert (await client.get("/readyz")).status_code == 200

            missing = await client.post("/admin/children/nobody/restart")
            assert missing.status_code == 404
            assert (await client.get("/admin/children/x/restart")).status_code == 405


async def test_admin_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_token="s3cret")
    with trio.fail_after(30):
        async with running_service(settings, fake("ok")) as svc:
            anonymous = await svc.client.get("/admin/pool")
            wrong = await svc.client.get("/admin/pool", headers={"authorization": "Bearer nope"})
            right = await svc.client.get("/admin/pool", headers={"authorization": "Bearer s3cret"})
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_admin_token"
    assert right.status_code == 200


async def _unused_receive() -> dict[str, object]:
    raise AssertionError("the admin check reads no body")


async def _unused_send(message: object) -> None:
    raise AssertionError("the admin check writes no answer")


def test_admin_without_token_refuses_remote_clients() -> None:
    pool = Pool(1, fake("ok"))
    supervisor = Supervisor(pool, TurnMultiplexer(pool))
    admin = AdminRoutes(supervisor, Telemetry(supervisor))

    def exchange(client: tuple[str, int]) -> Exchange:
        return Exchange({"client": client}, _unused_receive, _unused_send)

    admin.authorize(exchange(("127.0.0.1", 5000)))
    admin.authorize(exchange(("::1", 5000)))
    with pytest.raises(ApiError) as info:
        admin.authorize(exchange(("10.1.2.3", 5000)))
    assert info.value.status == 403


async def test_rolling_restart_under_steady_load_fails_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, pool_size=2, max_turns_per_child=4, queue_timeout_s=30)
    outcomes: list[int] = []
    with trio.fail_after(60):
        async with running_service(settings, fake("ok", delay_s=0.02, deltas=5)) as svc:
            pool = svc.handle.pool
            old = {c.pid for c in pool.children}
            stop = trio.Event()

            async def client_loop() -> None:
                while not stop.is_set():
                    response = await svc.client.post(
                        "/v1/chat/completions", json=chat_body("x", model="fake-model")
                    )
                    events = sse_events(response.content)
                    ok = (
                        response.status_code == 200
                        and content_of(events) == "d0 d1 d2 d3 d4 "
                        and not any(isinstance(e, dict) and "error" in e for e in events)
                    )
                    outcomes.append(200 if ok else response.status_code or -1)

            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(client_loop)
                await trio.sleep(0.3)
                assert (await svc.client.post("/admin/pool/rolling-restart")).status_code == 202
                await trio.sleep(0.05)
                while pool.rolling_restart_running:
                    await pool.wait_changed()
                await trio.sleep(0.3)
                stop.set()
            new = {c.pid for c in pool.children}
    assert not old & new  # every child was replaced
    assert outcomes
    assert set(outcomes) == {200}, f"failed requests: {[o for o in outcomes if o != 200]}"


async def test_sd_notify_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(path)
    messages: list[dict[str, str]] = []
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    assert notifier.watchdog_interval_s == pytest.approx(0.2)

    async def receive_until(key: str) -> dict[str, str]:
        while True:
            data = await receiver.recv(4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            messages.append(fields)
            if key in fields:
                return fields

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            from codex_bridge.service import ServiceHandle, run_service

            handle: ServiceHandle = await nursery.start(
                lambda task_status: run_service(
                    make_settings(tmp_path),
                    launch=fake("ok"),
                    notifier=notifier,
                    task_status=task_status,
                )
            )
            ready = await receive_until("READY")
            assert ready["READY"] == "1"
            assert ready["STATUS"].startswith("1/1 children ready")
            assert int(ready["MAINPID"]) == os.getpid()
            await receive_until("WATCHDOG")
            await receive_until("WATCHDOG")
            handle.shutdown()
            stopping = await receive_until("STOPPING")
    assert stopping["STOPPING"] == "1"
    receiver.close()
    notifier.close()


# -- the real process: signals ---------------------------------------------------------------


async def test_sigterm_finishes_short_turns_and_stops_long_ones(tmp_path: Path) -> None:
    with trio.fail_after(60):
        process, url = await start_serve(tmp_path, CODEX_BRIDGE_SHUTDOWN_GRACE_S="1")
        results: dict[str, Any] = {}
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:

                async def long_turn() -> None:
                    # 40 deltas, 0.1 s apart: 4 s, longer than the 1 s grace
                    response = await client.post(
                        "/v1/chat/completions",
                        json=chat_body(
                            "long", model="fake-model", stream_options={"include_usage": True}
                        ),
                    )
                    results["long"] = sse_events(response.content)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(long_turn)
                    await trio.sleep(0.5)
                    process.send_signal(signal.SIGTERM)
                    await trio.sleep(0.2)
                    refused = await client.post(
                        "/v1/chat/completions", json=chat_body("late", model="fake-model")
                    )
                    results["late"] = refused
            code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0
    late = results["late"]
    assert late.status_code == 503
    assert late.json()["error"]["code"] in ("shutting_down",)
    events = results["long"]
    (error,) = [e for e in events if isinstance(e, dict) and "error" in e]
    assert error["error"]["code"] == "service_shutting_down"
    assert events[-3]["choices"][0]["finish_reason"] == "error"
    assert "usage" in events[-2]
    assert events[-1] == "[DONE]"
    assert 0 < len(content_of(events).split()) < 40


async def test_sighup_rolls_the_pool(tmp_path: Path) -> None:
    with trio.fail_after(60):
        process, url = await start_serve(tmp_path)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                before = {c["pid"] for c in (await client.get("/admin/pool")).json()["children"]}
                process.send_signal(signal.SIGHUP)
                while True:
                    await trio.sleep(0.1)
                    status = (await client.get("/admin/pool")).json()
                    pids = {c["pid"] for c in status["children"]}
                    if not status["rolling_restart"] and status["ready"] == 2 and not pids & before:
                        break
                cli = await trio.run_process(
                    [str(Path(sys.executable).parent / "codex-bridge"), "pool", "status"],
                    env={**os.environ, "CODEX_BRIDGE_URL": url},
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                # one child, from the shell: waits until its replacement is ready
                slot0 = status["children"][0]
                restart = await trio.run_process(
                    [
                        str(Path(sys.executable).parent / "codex-bridge"),
                        "pool",
                        "restart",
                        "0",
                        "--json",
                        "--url",
                        url,
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert cli.returncode == 0, cli.stderr
    out = cli.stdout.decode()
    assert "2/2 ready" in out
    assert out.count("rolling restart") == 2  # the last exit reason of both slots
    assert restart.returncode == 0, restart.stderr
    after = json.loads(restart.stdout)["children"][0]
    assert after["pid"] != slot0["pid"]
    assert after["state"] == "idle"
    assert after["last_exit_reason"] == "restarted by an operator"


def test_pool_cli_reports_an_unreachable_service() -> None:
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "codex-bridge"), "pool", "status", "--json"],
        env={**os.environ, "CODEX_BRIDGE_URL": f"http://127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 3
    assert "cannot reach the service" in cli.stderr


async def test_pool_drained_refuses_at_once() -> None:
    pool = Pool(1, fake("ok"))
    mux = TurnMultiplexer(pool, queue_timeout_s=30)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            pool.paused = True
            with pytest.raises(NoChildAvailable, match="drained"):
                async with mux.open_turn(TurnRequest("x")):
                    pass
            nursery.cancel_scope.cancel()


async def test_retry_that_finds_no_child_ends_the_stream_cleanly(tmp_path: Path) -> None:
    """The child died before any output and no other child is there in time:
    the stream (already started) ends with an error chunk and [DONE]."""
    settings = make_settings(
        tmp_path, pool_size=1, queue_timeout_s=0.3, restart_backoff_initial_s=5.0
    )
    with trio.fail_after(30):
        async with running_service(
            settings, fake("crash-once", state=str(tmp_path / "crashed"), deltas=2)
        ) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("hi", model="fake-model")
            )
    events = sse_events(response.content)
    assert response.status_code == 200
    errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
    assert [e["code"] for e in errors] == ["no_codex_available"]
    assert events[-2]["choices"][0]["finish_reason"] == "error"
    assert events[-1] == "[DONE]"
