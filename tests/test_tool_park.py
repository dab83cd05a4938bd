"""The tool park on its own: parking, taking, timing out, key scoping — with
a stand-in supervisor whose turns record what they were told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from http_front import tool_park
from http_front.errors import ApiError
from http_front.tool_park import ToolPark
from supervisor import TurnRequest


@attrs.define(eq=False)
class FakeTurn:
    thread_id: str = "thread-1"
    outcome: Any = None
    answers: list[tuple[str, str, bool]] = attrs.Factory(list)
    resumes: int = 0
    released: bool = False

    def answer_tool_call(self, call_id: str, text: str, *, success: bool = True) -> bool:
        self.answers.append((call_id, text, success))
        return True

    def resumed(self) -> None:
        self.resumes += 1


class FakeSupervisor:
    def __init__(self) -> None:
        self.turns: list[FakeTurn] = []

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[FakeTurn]:
        turn = FakeTurn()
        self.turns.append(turn)
        try:
            yield turn
        finally:
            turn.released = True


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The API key of "the current request", settable by the test."""
    current: list[str | None] = ["alice"]
    monkeypatch.setattr(tool_park, "_key_name", lambda: current[0])
    return current


@asynccontextmanager
async def running(timeout_s: float = 60.0) -> AsyncIterator[tuple[ToolPark, FakeSupervisor]]:
    supervisor = FakeSupervisor()
    park = ToolPark(supervisor, timeout_s=timeout_s)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(park.run)
        yield park, supervisor
        nursery.cancel_scope.cancel()


async def parked_turn(park: ToolPark, calls: list[str]) -> FakeTurn:
    async with park.open_turn(TurnRequest("hi"), context="ctx") as turn:
        park.wait_for(turn, calls)
    fake: FakeTurn = turn  # type: ignore[assignment]
    return fake


def code_of(call: Any) -> str | None:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.status == 400
    return caught.value.code


async def test_a_turn_left_waiting_is_parked_until_every_result_comes(
    key: list[str | None],
) -> None:
    async with running() as (park, _):
        turn = await parked_turn(park, ["a", "b"])
        assert not turn.released
        assert park.parked == 1
        assert code_of(lambda: park.take(["a"])) == "tool_results_missing"
        assert code_of(lambda: park.take(["a", "zz"])) == "unknown_tool_call"
        assert park.parked == 1  # refusals leave it waiting
        async with park.resume({"a": "A", "b": "B"}) as held:
            assert held.turn is turn  # type: ignore[comparison-overlap]
            assert held.context == "ctx"
            assert turn.answers == [("a", "A", True), ("b", "B", True)]
            assert turn.resumes == 1
        await trio.testing.wait_all_tasks_blocked()
        assert turn.released  # left without new calls: let go
        assert park.parked == 0
        assert code_of(lambda: park.take(["a", "b"])) == "unknown_tool_call"


async def test_a_resumed_turn_can_park_again() -> None:
    async with running() as (park, _):
        await parked_turn(park, ["a"])
        async with park.resume({"a": "A"}) as held:
            park.wait_for(held.turn, ["c"])
        assert park.parked == 1
        assert code_of(lambda: park.take(["a"])) == "unknown_tool_call"
        async with park.resume({"c": "C"}):
            pass
        assert park.parked == 0


async def test_a_request_that_fails_or_leaves_releases_its_turn() -> None:
    async with running() as (park, supervisor):

        async def leave() -> None:
            async with park.open_turn(TurnRequest("hi")) as turn:
                park.wait_for(turn, ["a"])
                raise RuntimeError("the client went away")

        with pytest.raises(RuntimeError):
            await leave()
        await trio.testing.wait_all_tasks_blocked()
        [turn] = supervisor.turns
        assert turn.released
        assert park.parked == 0


async def test_nobody_answers_the_calls_fail_and_the_turn_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(timeout_s=30) as (park, _):
        turn = await parked_turn(park, ["a", "b"])
        await trio.sleep(29)
        assert not turn.released
        await trio.sleep(2)
        assert turn.released
        assert [(call, ok) for call, _, ok in turn.answers] == [("a", False), ("b", False)]
        assert "30 seconds" in turn.answers[0][1]
        assert park.parked == 0


async def test_only_the_key_that_started_a_turn_can_resume_it(key: list[str | None]) -> None:
    async with running() as (park, _):
        await parked_turn(park, ["a"])
        key[0] = "mallory"
        assert code_of(lambda: park.take(["a"])) == "unknown_tool_call"
        key[0] = "alice"
        async with park.resume({"a": "A"}):
            pass


async def test_results_of_two_turns_in_one_request_are_refused() -> None:
    async with running() as (park, _):
        await parked_turn(park, ["a"])
        await parked_turn(park, ["b"])
        assert code_of(lambda: park.take(["a", "b"])) == "tool_call_mismatch"
        assert park.parked == 2
