from __future__ import annotations

import functools
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_bridge.codex_binary import CodexBinaryNotFound, find_codex_binary
from fixtures.scripted_model import ScriptedModelServer, run_scripted_model
from supervisor.reaper import MANAGED_PIDS, enable_subreaper, reap_all_orphans
from tests.helpers import SESSION_PROCESSES, describe_processes, leftover_processes

#: Every async test runs within this many seconds, by trio's own deadline: a
#: hung test fails alone and unwinds (its fixtures and nurseries close, its
#: processes are reaped). pytest-timeout (120 s, pyproject.toml) only backs
#: it up: its signal lands in trio's event loop and ends the whole run.
TEST_DEADLINE_S = 100.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        # Not on the autojump clock: waiting on a real process there, it
        # would jump to any deadline at once (pytest-timeout bounds those).
        virtual = "autojump_clock" in getattr(item, "fixturenames", ())
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(test) and not virtual:
            item.obj = _bounded(test, TEST_DEADLINE_S)


def _bounded(
    test: Callable[..., Awaitable[None]], deadline_s: float
) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(deadline_s):
            await test(*args, **kwargs)

    return bounded


@pytest.fixture(scope="session", autouse=True)
def _adopt_orphans() -> None:
    """Run the tests as the service runs: as the subreaper of its children."""
    enable_subreaper()


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """No test may leave a child, grandchild or zombie of ours behind."""
    yield
    left = [
        pid
        for pid in leftover_processes(set())
        if pid not in MANAGED_PIDS and pid not in SESSION_PROCESSES
    ]
    if left:
        described = describe_processes(left)
        trio.run(reap_all_orphans)
        pytest.fail(f"processes left behind: {described}", pytrace=False)


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The real native codex binary. Its absence fails the run: `make test`
    installs it, and a suite without the real-binary tests proves little."""
    try:
        return find_codex_binary(os.environ.get("CODEX_BRIDGE_CODEX_BIN"))
    except CodexBinaryNotFound as exc:
        pytest.fail(f"{exc} (the real-binary tests must run)", pytrace=False)


@pytest.fixture
async def scripted_model() -> AsyncIterator[ScriptedModelServer]:
    async with run_scripted_model() as server:
        yield server
