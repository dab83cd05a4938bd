"""What operators see of the children: codex's stderr at its own level,
rate limited; planned restarts at INFO; restarts counted by why."""

from __future__ import annotations

import logging
import os
import shlex
import signal

import attrs
import pytest
import trio
import trio.testing

from supervisor.child import (
    Child,
    ChildLaunch,
    StderrLog,
    stderr_key,
    stderr_level,
    strip_ansi,
)
from supervisor.multiplexer import TurnMultiplexer
from supervisor.pool import ExitKind, Pool, PoolPolicy
from supervisor.turn import TurnRequest
from tests.helpers import collect, eventually, fake

#: How codex (tracing, with colours) writes a warning.
COLOURED_WARN = (
    "\x1b[2m2026-11-21T10:00:00.123456Z\x1b[0m \x1b[33m WARN\x1b[0m "
    "\x1b[2mcodex_core::client\x1b[0m\x1b[2m:\x1b[0m stream disconnected - retrying turn"
)
PLAIN_WARN = "2026-11-21T10:00:00.123456Z  WARN codex_core::client: stream disconnected"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "supervisor.child" and (level is None or record.levelno == level)
    ]


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the supervisor logged at WARNING or above."""
    return [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.name.startswith("supervisor") and record.levelno >= logging.WARNING
    ]


def stderr_log(clock: Clock, **limits: int) -> StderrLog:
    return StderrLog(logging.getLogger("supervisor.child"), "c", clock=clock, **limits)


def shell(launch: ChildLaunch, before: str = "", after: str = "") -> ChildLaunch:
    """``launch`` run by sh, with shell commands before it (its stderr) or after
    it (still running once the fake exits on EOF, as a slow codex would)."""
    command = shlex.join(launch.argv)
    script = f"{before}\n{command}\n{after}" if after else f"{before}\nexec {command}"
    return attrs.evolve(launch, argv=("/bin/sh", "-c", script))


# -- parsing codex's stderr -------------------------------------------------------------


def test_strip_ansi_removes_colours_and_links() -> None:
    assert strip_ansi(COLOURED_WARN) == (
        "2026-11-21T10:00:00.123456Z  WARN codex_core::client: stream disconnected - retrying turn"
    )
    link = "see \x1b]8;;https://example.com\x1b\\the docs\x1b]8;;\x1b\\ and \x1b]0;title\x07done"
    assert strip_ansi(link) == "see the docs and done"
    assert strip_ansi("\x1b[1;31mERROR\x1b[m \x1b[Kx\x1b(B") == "ERROR x"
    assert strip_ansi("no escapes [33m here") == "no escapes [33m here"


@pytest.mark.parametrize(
    ("line", "level"),
    [
        (PLAIN_WARN, logging.WARNING),
        (strip_ansi(COLOURED_WARN), logging.WARNING),
        ("2026-11-21T10:00:00Z ERROR codex_core::codex: turn failed", logging.ERROR),
        ("2026-11-21T10:00:00.1+01:00  INFO codex_core: started", logging.DEBUG),
        ("2026-11-21T10:00:00Z DEBUG codex_core: x", logging.DEBUG),
        ("2026-11-21T10:00:00Z TRACE codex_core: x", logging.DEBUG),
        ("WARN codex_core: no timestamp", logging.WARNING),
        ("  0.532s ERROR codex_core: an uptime timer", logging.ERROR),
        ("[2026-11-21T10:00:00Z WARN  codex] env_logger style", logging.WARNING),
        ("thread 'main' panicked at src/main.rs:3:5:", logging.ERROR),
        ("thread 'tokio-runtime-worker' panicked at 'boom', src/x.rs:1:1", logging.ERROR),
        ("the worker panicked at codex-rs/core/src/lib.rs:10:2", logging.ERROR),
        # the level is the line's, not a word in its message
        ("2026-11-21T10:00:00Z  INFO codex_core: upstream said ERROR 500", logging.DEBUG),
        ("exec: ERROR in the command", logging.DEBUG),
        ("WARNINGS: none", logging.DEBUG),
        ("error: something lower case", logging.DEBUG),
        ("fatal: simulated crash", logging.DEBUG),
    ],
)
def test_stderr_level(line: str, level: int) -> None:
    assert stderr_level(line) == level


def test_stderr_key_ignores_timestamps_and_numbers_and_is_bounded() -> None:
    first = "2026-11-21T10:00:00.123456Z  WARN codex_core: retrying (1/5 in 200ms)"
    again = "2026-11-21T10:00:07.000001Z  WARN codex_core: retrying (2/5 in 400ms)"
    assert stderr_key(first) == stderr_key(again)
    assert stderr_key(first) != stderr_key(first.replace("retrying", "giving up"))
    assert len(stderr_key("x" * 100_000)) <= 300


# -- rate limits ------------------------------------------------------------------------


def test_repeats_are_limited_per_message_and_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="supervisor.child")
    clock = Clock()
    stderr = stderr_log(clock)
    for second in range(20):
        clock.now = float(second)
        stderr.line(PLAIN_WARN.replace(":00.123456", f":{second:02d}.5"))
        if second == 10:
            stderr.line("2026-11-21T10:00:10Z ERROR codex_core: something else")
    assert messages(caplog, logging.WARNING) == [
        f"c stderr: 2026-11-21T10:00:{s:02d}.5Z  WARN codex_core::client: stream disconnected"
        for s in range(5)
    ]
    assert messages(caplog, logging.ERROR) == [
        "c stderr: 2026-11-21T10:00:10Z ERROR codex_core: something else"
    ]
    assert stderr.due == 60.0  # the first line's window
    clock.now = 59.9
    stderr.flush()
    assert len(messages(caplog)) == 6  # not yet
    clock.now = 60.0
    stderr.flush()
    assert messages(caplog)[-1] == (
        "c stderr: 2026-11-21T10:00:19.5Z  WARN codex_core::client: stream disconnected"
        " (15 similar lines suppressed)"
    )
    assert caplog.records[-1].levelno == logging.WARNING
    assert stderr.due == float("inf")
    # a new window: the message is logged again
    stderr.line(PLAIN_WARN)
    assert messages(caplog)[-1] == f"c stderr: {PLAIN_WARN}"


def test_warnings_and_errors_have_a_cap_whatever_their_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="supervisor.child")
    clock = Clock()
    stderr = stderr_log(clock)
    words = ["".join(chr(ord("a") + int(d)) for d in f"{i:03d}") for i in range(120)]
    for word in words:
        stderr.line(f"ERROR codex_core: failure {word}")
        stderr.line(f"INFO codex_core: chatter {word}")  # DEBUG: not capped
    assert len(messages(caplog, logging.ERROR)) == 50
    assert len(messages(caplog, logging.DEBUG)) == 120
    clock.now = 60.0
    stderr.flush()
    assert messages(caplog)[-1] == (
        "c stderr: ... (70 more warning and error lines suppressed: over 50 in 60s)"
    )
    assert caplog.records[-1].levelno == logging.ERROR


def test_the_messages_tracked_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="supervisor.child")
    clock = Clock()
    stderr = stderr_log(clock, max_messages=4)
    for _ in range(7):
        stderr.line("WARN codex_core: the same again")
    assert len(messages(caplog)) == 5
    for i in range(100):
        stderr.line(f"INFO codex_core: message {chr(ord('a') + i % 26) * (i + 1)}")
    assert len(stderr._messages) == 4
    # the repeated message, forgotten, had its count reported
    assert "c stderr: WARN codex_core: the same again (2 similar lines suppressed)" in (
        messages(caplog, logging.WARNING)
    )


def test_lines_below_the_log_level_are_not_even_tracked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.child")
    stderr = stderr_log(Clock())
    for _ in range(10):
        stderr.line("2026-11-21T10:00:00Z  INFO codex_core: started")
        stderr.line("unrecognised chatter")
    assert messages(caplog) == []
    assert len(stderr._messages) == 0


async def test_stderr_summary_comes_when_its_window_ends(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the child's stderr drainer, on virtual time: colours stripped (the
    exit reason's tail too), levels kept, and the summary logged at the end
    of the window although codex wrote nothing more."""
    caplog.set_level(logging.DEBUG, logger="supervisor.child")
    child = Child("c", fake("ok"))
    send, receive = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(child._drain_stderr, receive)
        for _ in range(12):
            await send.send_all(COLOURED_WARN.encode() + b"\n")
            await trio.sleep(1)
        await send.send_all(b"\x1b[31mthread 'main' panicked at src/main.rs:3:5:\x1b[0m\n")
        await trio.sleep(1)
        plain = strip_ansi(COLOURED_WARN)
        assert messages(caplog, logging.WARNING) == [f"c stderr: {plain}"] * 5
        assert messages(caplog, logging.ERROR) == [
            "c stderr: thread 'main' panicked at src/main.rs:3:5:"
        ]
        await trio.sleep(60)
        assert messages(caplog, logging.WARNING)[-1] == (
            f"c stderr: {plain} (7 similar lines suppressed)"
        )
        await send.aclose()
    assert "\x1b" not in child.stderr_tail()
    assert child.stderr_tail(1) == "thread 'main' panicked at src/main.rs:3:5:"
    assert not any("\x1b" in m for m in messages(caplog))


async def test_a_real_childs_warning_reaches_the_log_plain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="supervisor.child")
    warn = shlex.quote(COLOURED_WARN.replace("\x1b", "\\033"))
    launch = shell(fake("ok"), before=f"printf '%b\\n' {warn} >&2")
    child = Child("c", launch)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(child.run)
            await eventually(lambda: bool(messages(caplog, logging.WARNING)))
            child.request_stop()
    assert messages(caplog, logging.WARNING) == [f"c stderr: {strip_ansi(COLOURED_WARN)}"]


# -- planned restarts log at INFO; restarts are counted by why --------------------------


async def test_an_operators_restart_logs_nothing_above_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Even when the child takes the graceful steps: it stays on after EOF
    (``sleep``), so the stop needs SIGTERM."""
    caplog.set_level(logging.DEBUG)
    pool = Pool(1, shell(fake("ok", stop_grace_s=0.3), after="exec sleep 30"))
    assert pool.restart_counts == dict.fromkeys(map(str, ExitKind), 0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            first = pool.children[0]
            await pool.restart(first, "restarted by an operator").wait()
            assert pool.children[0] is not first
            assert loud(caplog) == []
            nursery.cancel_scope.cancel()
    assert (
        "INFO",
        "supervisor.child",
        "codex-0.0: did not exit on EOF; sending SIGTERM to its group",
    ) in [(r.levelname, r.name, r.getMessage()) for r in caplog.records]
    assert first.exit_signal is signal.SIGTERM
    assert pool.restart_counts["operator"] == 1
    assert sum(pool.restart_counts.values()) == 1
    assert loud(caplog) == []  # nor did the shutdown


async def test_rolling_restart_and_recycling_log_at_info_and_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = Pool(2, fake("ok"), policy=PoolPolicy(recycle_after_turns=1))
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            assert await pool.rolling_restart()
            async with mux.open_turn(TurnRequest("hi")) as turn:
                await collect(turn)
            await eventually(lambda: pool.restart_counts["recycled_turns"] == 1 and pool.ready)
            nursery.cancel_scope.cancel()
    counts = pool.restart_counts
    assert (counts["rolling"], counts["recycled_turns"]) == (2, 1)
    assert sum(counts.values()) == 3
    assert loud(caplog) == []


async def test_a_crash_still_warns_and_counts_as_crashed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = Pool(1, fake("crash-mid-turn"), backoff_initial_s=0.01)
    mux = TurnMultiplexer(pool)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            async with mux.open_turn(TurnRequest("hi")) as turn:
                await collect(turn)
            await eventually(lambda: pool.restart_counts["crashed"] == 1)
            nursery.cancel_scope.cancel()
    assert sum(pool.restart_counts.values()) == 1
    warnings = [m for m in loud(caplog) if m.startswith("WARNING supervisor.pool")]
    assert len(warnings) == 1
    assert "exited with code 17" in warnings[0]
    assert "restarting in" in warnings[0]


async def test_kills_and_hangs_are_counted_apart_from_crashes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = Pool(2, fake("ok"), backoff_initial_s=0.01)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            a, b = pool.children
            assert a.pid is not None
            os.kill(a.pid, signal.SIGKILL)  # from outside: the OOM killer, say
            pool.kill(b, "no answer to a liveness check within 10s")
            await eventually(
                lambda: sum(pool.restart_counts.values()) == 2 and len(pool.usable_children) == 2
            )
            # the multiplexer's restart of a child that kept a turn running
            c = pool.children[0]
            await pool.restart(c, "a turn left running", kind=ExitKind.HUNG).wait()
            nursery.cancel_scope.cancel()
    counts = pool.restart_counts
    assert (counts["killed"], counts["hung"], counts["crashed"]) == (1, 2, 0)
    assert sum(counts.values()) == 3
    levels = {m.split(" ", 1)[0] for m in loud(caplog)}
    assert levels == {"WARNING", "ERROR"}  # unplanned ends stay loud


async def test_a_restart_of_an_unknown_kind_is_refused() -> None:
    pool = Pool(1, fake("ok"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            child = pool.children[0]
            with pytest.raises(ValueError, match="nonsense"):
                pool.restart(child, "why not", kind="nonsense")
            await pool.restart(child, "an upgrade", kind=ExitKind.ROLLING).wait()
            counts = pool.restart_counts
            assert isinstance(counts, dict)
            counts["rolling"] = 100  # a copy: the pool's own count is untouched
            assert pool.restart_counts["rolling"] == 1
            nursery.cancel_scope.cancel()
