"""Pool, child lifecycle and multiplexer against hand-written fake children."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge.messages import Notification
from bridge.protocol import (
    AgentMessageDelta,
    TokenCounts,
    TurnErrorEvent,
    TurnEvent,
    TurnStatus,
)
from supervisor import FailureKind, RefusalKind, Turn, TurnEnded, TurnRequest
from supervisor.child import Child, ChildStartError, ChildState
from supervisor.multiplexer import TurnMultiplexer
from supervisor.outcome import NoChildAvailable, Overloaded
from supervisor.pool import Pool
from tests.helpers import (
    LineLog,
    chat_body,
    collect,
    content_of,
    fake,
    leftover_processes,
    make_settings,
    running_service,
    sse_events,
    state_of,
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


def make_turn(**kwargs: Any) -> Turn:
    """A turn on thread "t", fed by hand."""
    return Turn(thread_id="t", child_name="c", model="m", **kwargs)


# -- child lifecycle ----------------------------------------------------------------


async def test_child_starts_ready_and_stops_reaped() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = Child("c", fake("ok"))
            await nursery.start(child.run)
            assert state_of(child) is ChildState.READY
            assert child.pid is not None
            assert alive(child.pid)
            child.request_stop()
    assert state_of(child) is ChildState.STOPPED
    assert child.exit_reason == "stopped by the supervisor"
    assert not alive(child.pid)
    assert leftover_processes({child.pid}) == []


async def test_child_that_exits_during_initialize_reports_its_stderr() -> None:
    child = Child("c", fake("exit-during-init"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ChildStartError, match="simulated failure"):
                await nursery.start(child.run)
    assert child.state is ChildState.STOPPED
    assert child.pid is not None
    assert leftover_processes({child.pid}) == []


async def test_child_that_never_answers_initialize_is_killed_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = Child("c", fake("hang-init", startup_timeout_s=5.0))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        with pytest.raises(ChildStartError, match="no answer to initialize within 5s"):
            await nursery.start(child.run)
    # 5 s deadline, 1 s of grace after closing stdin, then SIGTERM; the
    # virtual clock may also jump the 1 s SIGTERM grace while the real
    # process is dying, and then SIGKILL finishes it.
    assert 6.0 <= trio.current_time() - start <= 7.0
    assert child.pid is not None
    assert not alive(child.pid)
    assert "killed by SIG" in (child.exit_reason or "")


async def test_pool_restarts_a_child_that_dies() -> None:
    pool = Pool(1, fake("ok"), backoff_initial_s=0.01)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            first = pool.slots[0]
            assert first is not None
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            while pool.restarts[0] == 0 or not pool.live:
                await pool.wait_changed()
            second = pool.slots[0]
            assert second is not first
            assert second is not None
            assert second.usable
            assert "SIGKILL" in (pool.last_exit_reason[0] or "")
            nursery.cancel_scope.cancel()
    assert second.pid is not None
    assert leftover_processes({first.pid, second.pid}) == []


async def test_pool_with_failing_children_reports_why() -> None:
    pool = Pool(1, fake("exit-during-init"), backoff_initial_s=0.01, backoff_max_s=0.05)
    mux = TurnMultiplexer(pool, queue_timeout_s=0.3)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            assert not pool.live
            with pytest.raises(NoChildAvailable, match="simulated failure"):
                async with mux.open_turn(TurnRequest("hi")):
                    pass
            nursery.cancel_scope.cancel()


# -- turns through the multiplexer ------------------------------------------------------


async def test_turn_events_in_order_and_one_terminal_event() -> None:
    pool = Pool(1, fake("garbage", deltas=5))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("hi")) as turn:
                events = await collect(turn)
                assert await turn.next_event() is None
            nursery.cancel_scope.cancel()
    deltas = [e.delta for e in events if isinstance(e, AgentMessageDelta)]
    assert deltas == [f"d{i} " for i in range(5)]
    assert isinstance(events[-1], TurnEnded)
    assert events[-1].outcome.status is TurnStatus.COMPLETED
    assert sum(isinstance(e, TurnEnded) for e in events) == 1


async def test_child_crash_mid_turn_ends_the_turn_with_the_reason() -> None:
    pool = Pool(1, fake("crash-mid-turn", deltas=5), backoff_initial_s=0.01)
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("hi")) as turn:
                events = await collect(turn)
            nursery.cancel_scope.cancel()
    final = events[-1]
    assert isinstance(final, TurnEnded)
    assert final.outcome.status is TurnStatus.FAILED
    assert turn.failure_kind is FailureKind.CHILD_EXITED
    assert "exited with code 17" in (final.outcome.message or "")
    assert "simulated crash" in (final.outcome.message or "")
    assert [e.delta for e in events if isinstance(e, AgentMessageDelta)] == ["d0 ", "d1 "]


async def test_leaving_a_turn_early_interrupts_it() -> None:
    log = LineLog()
    pool = Pool(1, fake("hang-turn", tap=log))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            child = pool.children[0]
            async with mux.open_turn(TurnRequest("hi")) as turn:
                first = await turn.next_event()
                assert first is not None
            (interrupt,) = log.sent("turn/interrupt")
            assert interrupt["params"] == {"threadId": turn.thread_id, "turnId": turn.turn_id}
            assert turn.outcome is not None
            assert mux.load(child) == 0
            assert child.usable
            assert not child.turns
            nursery.cancel_scope.cancel()


async def test_least_busy_child_first() -> None:
    pool = Pool(2, fake("hang-turn"))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            a, b = pool.children
            async with mux.open_turn(TurnRequest("1")), mux.open_turn(TurnRequest("2")):
                assert (mux.load(a), mux.load(b)) == (1, 1)
                async with mux.open_turn(TurnRequest("3")):
                    assert sorted((mux.load(a), mux.load(b))) == [1, 2]
            assert (mux.load(a), mux.load(b)) == (0, 0)
            nursery.cancel_scope.cancel()


async def test_full_queue_is_refused_and_waiters_go_in_order() -> None:
    pool = Pool(1, fake("hang-turn"))
    mux = TurnMultiplexer(pool, max_turns_per_child=1, queue_size=2, queue_timeout_s=10)
    order: list[str] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            release = trio.Event()
            got = {name: trio.Event() for name in ("first", "second", "third")}

            async def hold(name: str) -> None:
                async with mux.open_turn(TurnRequest(name)):
                    order.append(name)
                    got[name].set()
                    await release.wait()

            nursery.start_soon(hold, "first")
            await got["first"].wait()
            nursery.start_soon(hold, "second")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hold, "third")
            await trio.testing.wait_all_tasks_blocked()
            assert mux.queued == 2
            with pytest.raises(Overloaded) as info:
                async with mux.open_turn(TurnRequest("fourth")):
                    pass
            assert info.value.kind is RefusalKind.OVERLOADED
            assert info.value.retry_after_s is not None
            release.set()
            await got["third"].wait()
            nursery.cancel_scope.cancel()
    assert order == ["first", "second", "third"]


async def test_queue_wait_has_a_deadline() -> None:
    pool = Pool(1, fake("hang-turn"))
    mux = TurnMultiplexer(pool, max_turns_per_child=1, queue_size=5, queue_timeout_s=0.2)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("busy")):
                with pytest.raises(Overloaded, match="stayed busy"):
                    async with mux.open_turn(TurnRequest("waits")):
                        pass
                assert mux.queued == 0
            nursery.cancel_scope.cancel()


# -- the turn object itself (no processes) ------------------------------------------


def _delta(thread: str, text: str, turn: str = "u1") -> Notification:
    return Notification(
        "item/agentMessage/delta",
        {"threadId": thread, "turnId": turn, "itemId": "m", "delta": text},
    )


async def test_silent_turn_fails_at_the_idle_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turn = make_turn(buffer_size=8, idle_timeout_s=42)
    turn.turn_id = "u1"
    turn.on_notification(_delta("t", "a"))
    start = trio.current_time()
    assert isinstance(await turn.next_event(), AgentMessageDelta)
    final = await turn.next_event()
    assert trio.current_time() - start == pytest.approx(42)
    assert isinstance(final, TurnEnded)
    assert final.outcome.status is TurnStatus.FAILED
    assert turn.failure_kind is FailureKind.IDLE_TIMEOUT
    assert await turn.next_event() is None


async def test_idle_deadline_holds_for_a_consumer_that_keeps_coming_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The SSE pump waits in short slices (keepalives); the idle timer must not restart."""
    turn = make_turn(buffer_size=8, idle_timeout_s=42)
    turn.turn_id = "u1"
    turn.on_notification(_delta("t", "a"))
    start = trio.current_time()
    events: list[TurnEvent | TurnEnded] = []
    keepalives = 0
    with trio.fail_after(100):  # virtual time
        while True:
            with trio.move_on_after(5) as silence:
                event = await turn.next_event()
            if silence.cancelled_caught:
                keepalives += 1
                continue
            if event is None:
                break
            events.append(event)
    assert trio.current_time() - start == pytest.approx(42)
    assert keepalives == 8  # at 5, 10, ..., 40
    assert turn.failure_kind is FailureKind.IDLE_TIMEOUT
    assert isinstance(events[-1], TurnEnded)


async def test_idle_deadline_counts_from_codex_last_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turn = make_turn(buffer_size=8, idle_timeout_s=10)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def feed() -> None:
            for _ in range(3):
                await trio.sleep(7)
                turn.on_notification(_delta("t", "x", turn=""))

        nursery.start_soon(feed)
        events = await collect(turn)
    # events at 7, 14, 21; silence from 21 on: the turn fails at 31
    assert trio.current_time() - start == pytest.approx(31)
    assert turn.failure_kind is FailureKind.IDLE_TIMEOUT
    assert len(events) == 4


async def test_turn_deadline(autojump_clock: trio.testing.MockClock) -> None:
    turn = make_turn(buffer_size=8, idle_timeout_s=10, turn_timeout_s=25)
    events = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def feed() -> None:
            while True:
                await trio.sleep(6)
                turn.on_notification(_delta("t", "x", turn=""))

        nursery.start_soon(feed)
        events = await collect(turn)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(25)
    assert turn.failure_kind is FailureKind.TURN_TIMEOUT
    assert len(events) == 5  # deltas at 6, 12, 18, 24 and the terminal event


async def test_lagging_consumer_gets_bursts_merged_not_lost() -> None:
    turn = make_turn(buffer_size=16)
    assert turn.coalesce_after == 2
    texts = [f"{i} " for i in range(1000)]
    for text in texts:
        turn.on_notification(_delta("t", text))  # the reader never blocks
    assert turn.pending <= 3
    turn.on_notification(
        Notification(
            "turn/completed", {"threadId": "t", "turn": {"id": "u1", "status": "completed"}}
        )
    )
    events = await collect(turn)
    deltas = [e.delta for e in events if isinstance(e, AgentMessageDelta)]
    assert "".join(deltas) == "".join(texts)
    assert deltas[:2] == ["0 ", "1 "]  # below the threshold, one event per delta
    assert len(deltas) == 3
    assert turn.failure_kind is None


@pytest.mark.parametrize("merged", [255, 256, 257, 511, 512, 1000])
async def test_a_merged_burst_is_whole_at_every_length(merged: int) -> None:
    """Regression: a run of exactly 256 merged deltas (one compaction, no
    more) was handed out as its first delta alone; 255 deltas were lost."""
    turn = make_turn(buffer_size=16)
    texts = [f"{i} " for i in range(turn.coalesce_after + merged)]
    for text in texts:
        turn.on_notification(_delta("t", text))
    turn.on_notification(
        Notification(
            "turn/completed", {"threadId": "t", "turn": {"id": "u1", "status": "completed"}}
        )
    )
    events = await collect(turn)
    assert "".join(e.delta for e in events if isinstance(e, AgentMessageDelta)) == "".join(texts)


async def test_backlog_of_a_client_that_stops_reading_is_capped_in_bytes() -> None:
    """Merged deltas are one queue entry; the byte cap still ends a flood."""
    turn = make_turn(buffer_size=16, max_buffered_bytes=64 * 1024)
    turn.turn_id = "u1"
    delta = "x" * 100
    for _ in range(5000):  # 500 kB of text while nobody reads
        turn.on_notification(_delta("t", delta))
    assert turn.failure_kind is FailureKind.CONSUMER_TOO_SLOW
    assert turn.buffered_bytes <= 64 * 1024
    assert turn.pending <= 3
    events = await collect(turn)
    text = "".join(e.delta for e in events if isinstance(e, AgentMessageDelta))
    assert 60 * 1024 <= len(text) <= 64 * 1024  # what was queued is still delivered
    assert text == delta * (len(text) // 100)
    assert turn.buffered_bytes == 0
    final = events[-1]
    assert isinstance(final, TurnEnded)
    assert "too slowly" in (final.outcome.message or "")


async def test_byte_accounting_follows_what_the_consumer_takes() -> None:
    turn = make_turn(buffer_size=128, max_buffered_bytes=1000)  # no merging here
    turn.turn_id = "u1"
    for _ in range(5):
        turn.on_notification(_delta("t", "y" * 150))  # 750 bytes queued
    assert turn.buffered_bytes == 750
    for _ in range(3):
        await turn.next_event()
    assert turn.buffered_bytes == 300
    for _ in range(4):
        turn.on_notification(_delta("t", "z" * 150))  # 900 bytes: still fits
    assert turn.failure_kind is None
    turn.on_notification(_delta("t", "z" * 150))  # 1050 > 1000
    assert turn.failure_kind is FailureKind.CONSUMER_TOO_SLOW


async def test_deltas_of_different_items_are_not_merged() -> None:
    turn = make_turn(buffer_size=8)
    for i in range(6):
        item = "a" if i < 3 else "b"
        turn.on_notification(
            Notification(
                "item/agentMessage/delta",
                {"threadId": "t", "turnId": "u1", "itemId": item, "delta": str(i)},
            )
        )
    turn.fail(FailureKind.CANCELLED, "stop")
    events = [e for e in await collect(turn) if isinstance(e, AgentMessageDelta)]
    assert [(e.item_id, e.delta) for e in events] == [("a", "0"), ("a", "12"), ("b", "345")]


async def test_too_many_unmergeable_events_fail_the_turn() -> None:
    turn = make_turn(buffer_size=4)
    for i in range(10):
        turn.on_notification(
            Notification(
                "item/started",
                {
                    "threadId": "t",
                    "turnId": "u1",
                    "item": {"type": "commandExecution", "id": str(i)},
                },
            )
        )
    events = await collect(turn)
    assert len(events) == 5  # the four queued, then the terminal event
    assert turn.failure_kind is FailureKind.CONSUMER_TOO_SLOW


def _usage(total: int, last: int, turn: str = "u1") -> Notification:
    return Notification(
        "thread/tokenUsage/updated",
        {
            "threadId": "t",
            "turnId": turn,
            "tokenUsage": {
                "total": {"totalTokens": total, "inputTokens": total},
                "last": {"totalTokens": last, "inputTokens": last},
            },
        },
    )


async def test_turn_usage_is_the_thread_total_minus_the_total_before_it() -> None:
    turn = make_turn(buffer_size=8, usage_baseline=TokenCounts(total_tokens=100, input_tokens=100))
    turn.on_notification(_usage(130, 30))
    turn.on_notification(_usage(175, 45))
    assert turn.usage.total_tokens == 75
    assert turn.thread_total == TokenCounts(total_tokens=175, input_tokens=175)


async def test_a_repeated_report_of_a_turn_cut_before_any_call_counts_nothing() -> None:
    """Interrupted during its first model call, codex repeats the previous report."""
    turn = make_turn(buffer_size=8, usage_baseline=TokenCounts(total_tokens=100, input_tokens=100))
    turn.fail(FailureKind.SHUTDOWN, "stop")
    turn.on_notification(_usage(100, 40))  # after the bridge ended it: still counted
    assert turn.usage.total_tokens == 0


async def test_usage_reported_after_the_turn_was_ended_is_counted() -> None:
    turn = make_turn(buffer_size=8, usage_baseline=TokenCounts())
    turn.fail(FailureKind.SHUTDOWN, "stop")
    turn.on_notification(_usage(40, 40))  # the call codex finished before the cut
    assert turn.usage.total_tokens == 40


async def test_without_a_baseline_the_first_report_tells_what_came_before() -> None:
    turn = make_turn(buffer_size=8)  # e.g. a thread resumed after a restart
    turn.on_notification(_usage(130, 30))
    turn.on_notification(_usage(175, 45))
    assert turn.usage.total_tokens == 75
    assert make_turn(buffer_size=8).usage == TokenCounts()


async def test_completion_of_another_turn_is_ignored() -> None:
    turn = make_turn(buffer_size=8)
    turn.turn_id = "mine"
    turn.on_notification(
        Notification(
            "turn/completed", {"threadId": "t", "turn": {"id": "earlier", "status": "completed"}}
        )
    )
    assert not turn.finished
    turn.on_notification(
        Notification(
            "turn/completed", {"threadId": "t", "turn": {"id": "mine", "status": "interrupted"}}
        )
    )
    assert turn.outcome is not None
    assert turn.outcome.status is TurnStatus.INTERRUPTED


# -- through HTTP ------------------------------------------------------------------------


async def test_http_stream_of_a_crashed_child_ends_with_error_and_done(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_settings(tmp_path), fake("crash-mid-turn", 5)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body("hi", model="fake-model", stream_options={"include_usage": True}),
            )
    events = sse_events(response.content)
    assert content_of(events) == "d0 d1 "
    (error,) = [e for e in events if isinstance(e, dict) and "error" in e]
    assert error["error"]["code"] == "codex_exited"
    assert events[-3]["choices"][0]["finish_reason"] == "error"
    assert events[-2]["choices"] == []
    assert "usage" in events[-2]
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("stream", [True, False])
async def test_http_429_with_retry_after_when_saturated(tmp_path: Path, stream: bool) -> None:
    settings = make_settings(tmp_path, max_turns_per_child=1, queue_size=0)
    with trio.fail_after(30):
        async with (
            running_service(settings, fake("hang-turn")) as svc,
            svc.client.stream(
                "POST", "/v1/chat/completions", json=chat_body("first", model="fake-model")
            ) as first,
        ):
            chunks = first.aiter_bytes()  # kept: dropping it would close the stream
            await chunks.__anext__()  # the first turn runs (and never ends)
            refused = await svc.client.post(
                "/v1/chat/completions",
                json=chat_body("second", model="fake-model", stream=stream),
            )
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"


def _retrying(message: str = "Reconnecting... 1/5") -> Notification:
    return Notification(
        "error",
        {
            "threadId": "t",
            "turnId": "u1",
            "willRetry": True,
            "error": {"message": message, "additionalDetails": "network unreachable"},
        },
    )


async def test_turn_that_only_retries_fails_at_the_retry_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """codex retries an unreachable model forever; the turn must not."""
    turn = make_turn(buffer_size=64, idle_timeout_s=600, retry_timeout_s=30)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def retry_forever() -> None:
            while True:
                await trio.sleep(4)
                turn.on_notification(_retrying())

        nursery.start_soon(retry_forever)
        events = await collect(turn)
        nursery.cancel_scope.cancel()
    # retries at 4, 8, ..., 28 keep the idle timer quiet but are no progress:
    # 30 s after the start of the turn it fails
    assert trio.current_time() - start == pytest.approx(30)
    assert turn.failure_kind is FailureKind.RETRY_TIMEOUT
    final = events[-1]
    assert isinstance(final, TurnEnded)
    assert "could not be reached for 30s" in (final.outcome.message or "")
    assert "network unreachable" in (final.outcome.message or "")


async def test_progress_resets_the_retry_deadline(autojump_clock: trio.testing.MockClock) -> None:
    turn = make_turn(buffer_size=64, idle_timeout_s=600, retry_timeout_s=30)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def script() -> None:
            await trio.sleep(20)
            turn.on_notification(_retrying())
            await trio.sleep(5)
            turn.on_notification(_delta("t", "progress"))  # at 25: progress
            await trio.sleep(10)
            turn.on_notification(_retrying())  # at 35: retrying again, then silence

        nursery.start_soon(script)
        events = await collect(turn)
    # silent after the retry at 35; the retry deadline is 25 + 30 = 55
    assert trio.current_time() - start == pytest.approx(55)
    assert turn.failure_kind is FailureKind.RETRY_TIMEOUT
    assert sum(isinstance(e, AgentMessageDelta) for e in events) == 1


async def test_retry_deadline_is_checked_as_retries_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that is busy elsewhere still sees the turn end on time."""
    clock_start = trio.current_time()
    turn = make_turn(buffer_size=64, retry_timeout_s=0.0)
    turn.on_notification(_retrying())  # already past the deadline on arrival
    assert turn.failure_kind is FailureKind.RETRY_TIMEOUT
    events = await collect(turn)
    assert isinstance(events[0], TurnErrorEvent)  # the retry is still shown
    assert isinstance(events[-1], TurnEnded)
    assert trio.current_time() == clock_start


async def test_http_flood_of_deltas_arrives_whole(tmp_path: Path) -> None:
    """A child writing 20,000 deltas as fast as it can: nothing lost or reordered."""
    with trio.fail_after(60):
        async with running_service(make_settings(tmp_path), fake("ok", 20_000)) as svc:
            response = await svc.client.post(
                "/v1/chat/completions", json=chat_body("flood", model="fake-model")
            )
    text = content_of(sse_events(response.content))
    assert text == "".join(f"d{i} " for i in range(20_000))
