"""Running a request's turn, for any front door.

:func:`run_attempts` runs the first of a conversation plan's candidate turns
that can run, again once if its child died before the client saw anything;
:func:`converse` does a conversation's bookkeeping around it; :func:`ending`
says, in no API's terms, how the answer ends (finish reason, error, usage).
Each door only says how to consume a turn and how to write the answer.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import attrs
import trio

from bridge.protocol import TokenCounts
from supervisor import (
    FailureKind,
    Supervisor,
    ThreadUnavailable,
    Turn,
    TurnRefused,
    TurnRequest,
)

from . import telemetry
from .conversation.identity import RequestKind
from .conversation.manager import Conversational, Conversations, Plan
from .errors import ApiError, refusal_error, turn_error
from .images import write as write_images
from .pieces import Usage
from .structured import with_json_mode
from .tool_park import Held, ToolPark

log = logging.getLogger(__name__)


@attrs.frozen
class Attempt:
    """The turn that ran (None if every candidate was refused before one
    did), which candidate it was, and the refusal that ended the tries."""

    turn: Turn | None
    candidate: int
    refusal: TurnRefused | None = None


#: Consumes a turn to its end; True if the client has seen any of it.
Consume = Callable[[Turn], Awaitable[bool]]


#: Opens a turn (the supervisor's ``open_turn``, or the tool park's).
Opener = Callable[[TurnRequest], AbstractAsyncContextManager[Turn]]


async def run_attempts(
    supervisor: Supervisor,
    candidates: Sequence[TurnRequest],
    consume: Consume,
    opener: Opener | None = None,
) -> Attempt:
    """Run the first candidate turn that can run, through ``consume``.

    A thread codex cannot resume or roll back moves on to the next
    candidate; a child that died before the client saw anything of the
    turn gets it run again once.
    """
    index = 0
    retried = False
    record = telemetry.current()
    while True:
        turn: Turn | None = None
        shown = False
        try:
            async with (opener or supervisor.open_turn)(candidates[index]) as turn:
                if record is not None:
                    record.ran(turn, retried=retried)
                    if record.keep_content:
                        record.prompt = candidates[index].text
                shown = await consume(turn)
        except ThreadUnavailable as exc:
            if index + 1 < len(candidates):
                log.info("%s; continuing on a fresh thread", exc.message)
                index += 1
                continue
            return _refused(record, Attempt(turn, index, exc))
        except TurnRefused as exc:
            return _refused(record, Attempt(turn, index, exc))
        assert turn is not None
        if not retried and not shown and turn.failure_kind is FailureKind.CHILD_EXITED:
            log.warning("%s died before the turn showed anything; retrying", turn.child_name)
            retried = True
            continue
        return Attempt(turn, index)


def _refused(record: telemetry.RequestRecord | None, attempt: Attempt) -> Attempt:
    if record is not None and attempt.refusal is not None:
        record.refusal = attempt.refusal.kind.name.lower()
        record.refused_queue_s += attempt.refusal.queue_wait_s
    return attempt


#: After the last of a step's function calls, how long nothing else must
#: come before the step counts as complete (codex asks for each call on its
#: own; the model's calls of one response arrive within milliseconds).
CALL_GRACE_S = 0.1


async def calls_complete(turn: Turn) -> bool:
    """Whether the client's calls made so far (none more known to be
    coming) are the whole step: codex says nothing more for
    :data:`CALL_GRACE_S`."""
    return await turn.quiet_for(CALL_GRACE_S)


class FinishReason(enum.StrEnum):
    STOP = "stop"  # the turn completed
    TOOL_CALLS = "tool_calls"  # the model called the client's functions; the turn waits
    LENGTH = "length"  # the model's output limit
    ERROR = "error"  # failed, interrupted, or could not run


@attrs.frozen
class Ending:
    """How an answer ends."""

    finish_reason: FinishReason
    error: ApiError | None
    usage: Usage


def ending(attempt: Attempt, *, stopped: bool = False, calls: bool = False) -> Ending:
    """How the answer ends. ``stopped``: the door ended the turn itself at a
    stop sequence — a normal end, whatever leaving the turn did to it.
    ``calls``: the model called the client's functions and the turn waits."""
    turn = attempt.turn
    usage = Usage.of(turn.usage if turn is not None else TokenCounts())
    if attempt.refusal is not None:
        refused = refusal_error(attempt.refusal)
        telemetry.note_error(refused)
        return Ending(FinishReason.ERROR, refused, usage)
    assert turn is not None
    if stopped:
        return Ending(FinishReason.STOP, None, usage)
    if calls and turn.outcome is None:
        return Ending(FinishReason.TOOL_CALLS, None, usage)
    assert turn.outcome is not None
    outcome = turn.outcome
    if outcome.hit_output_limit:
        return Ending(FinishReason.LENGTH, None, usage)
    error = turn_error(outcome)
    if error is not None:
        telemetry.note_error(error)
    return Ending(FinishReason.STOP if error is None else FinishReason.ERROR, error, usage)


@attrs.frozen
class Answer:
    """A completed turn's answer, for the conversation mapping."""

    candidate: int  # which of the plan's requests ran
    thread_id: str
    turn_id: str
    content: str


def answer_of(attempt: Attempt, content: str) -> Answer | None:
    """The answer to remember, if the turn completed."""
    turn = attempt.turn
    if turn is None or turn.outcome is None or turn_error(turn.outcome) is not None:
        return None
    record = telemetry.current()
    if record is not None and record.keep_content:
        record.answer = content
    return Answer(attempt.candidate, turn.thread_id, turn.turn_id, content)


#: Runs the plan's candidates and writes the answer; calls the callback with
#: the answer before the answer's last bytes go out. True: the turn lives on
#: (parked on the client's function calls), and with it the plan's workspace.
Respond = Callable[[Plan, Callable[[Answer], None]], Awaitable[bool | None]]


async def converse(
    conversations: Conversations,
    kind: RequestKind,
    key: str | None,
    request: Conversational,
    respond: Respond,
) -> None:
    """One turn of a conversation (or a keyless request), then its bookkeeping.

    The conversation stays locked until the mapping is written, so the next
    turn of it sees this one.
    """
    async with conversations.one_at_a_time(key):
        plan = await conversations.plan(kind, key, request)
        answers: list[Answer] = []
        lives_on = False
        try:
            plan = await _prepared(plan, request)
            lives_on = bool(await respond(plan, answers.append))
        finally:
            # Shielded and bounded: the server reports a finished exchange as
            # a disconnect, which must not cut this short.
            with trio.move_on_after(10, shield=True):
                if answers:
                    answer = answers[0]
                    await conversations.remember(
                        plan, answer.candidate, answer.thread_id, answer.turn_id, answer.content
                    )
                if not lives_on:  # else the turn's holder finishes it
                    await conversations.finish(plan)


async def _prepared(plan: Plan, request: Conversational) -> Plan:
    """The plan's turns with what goes beside their text: the images of the
    messages each sends (written where it runs, as codex image inputs; the
    earlier ones travel in the history) and the JSON-mode note."""
    written: dict[tuple[str, int], tuple[tuple[str, ...], tuple[str, ...]]] = {}
    candidates = []
    for candidate in plan.candidates:
        turn = candidate.request
        images = [i for m in request.message_images[candidate.before :] for i in m]
        if images:
            cwd = turn.cwd or "."
            if (cwd, candidate.before) not in written:
                written[cwd, candidate.before] = await write_images(images, cwd)
            paths, urls = written[cwd, candidate.before]
            turn = attrs.evolve(turn, local_images=paths, image_urls=urls)
        if request.json_mode:
            turn = with_json_mode(turn)
        candidates.append(attrs.evolve(candidate, request=turn))
    return attrs.evolve(plan, candidates=tuple(candidates))


async def run_turn(
    supervisor: Supervisor,
    park: ToolPark | None,
    plan: Plan,
    consume: Consume,
    resumed: Held | None = None,
) -> Attempt:
    """Run the plan's turn through ``consume``, or go on with a resumed one.

    A turn that may call the client's functions (``park`` given) is opened
    in the park, where it can outlive this request; a resumed one is parked
    again, if it calls again, as soon as it stops — before the answer's last
    bytes go out, so the client's next request finds it waiting.
    """
    if resumed is not None:
        assert park is not None
        async with park.leaving(resumed):
            await consume(resumed.turn)
        return Attempt(resumed.turn, 0)
    if park is None:
        return await run_attempts(supervisor, plan.requests, consume)
    requests = plan.requests

    def opener(request: TurnRequest) -> AbstractAsyncContextManager[Turn]:
        return park.open_turn(request, (plan, requests.index(request)))

    return await run_attempts(supervisor, requests, consume, opener)


#: Writes the rest of a resumed turn as the request's answer (see
#: :func:`go_on`); True if it is parked again.
ResumedRespond = Callable[[Plan, Callable[[Answer], None], Held], Awaitable[bool]]


async def go_on(
    conversations: Conversations, held: Held, request: Conversational, respond: ResumedRespond
) -> None:
    """A parked turn goes on as this request's answer (the request brought
    its function results); remembered, once it completes, as this request's
    history — its calls and results included."""
    first, index = held.context
    plan = attrs.evolve(
        first,
        candidates=(first.candidates[index],),
        signatures=conversations.signatures(request),
    )
    answers: list[Answer] = []
    await respond(plan, answers.append, held)
    if answers:
        done = answers[0]
        with trio.move_on_after(10, shield=True):
            await conversations.remember(plan, 0, done.thread_id, done.turn_id, done.content)
