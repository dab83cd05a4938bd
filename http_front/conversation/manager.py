"""From a chat request to the turn(s) to try, and the mapping kept afterwards.

A request with a conversation key continues that conversation's thread when
its history extends what the thread has seen: only the new user message(s)
are sent. A regenerated answer or an edited user message rolls the thread
back to the turn where the request stops agreeing with it. Otherwise (an
edited answer, an unknown key, a thread codex can no longer resume or roll
back, new messages too long together for one turn's input) the turn runs on
a fresh thread seeded with the request's history, and the mapping follows
it. Background tasks and requests without a key run on ephemeral threads and
leave every mapping alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from supervisor import KeyedLocks, TurnRequest

from ..errors import ApiError
from ..images import Image
from ..turn_input import MAX_TURN_INPUT_CHARS, turn_input_too_long
from .identity import (
    RequestKind,
    conversation_key,
    is_background_task,
    signature,
    workspace_name,
)
from .scratch import ScratchDirs
from .store import ConversationStore, Record

log = logging.getLogger(__name__)


class Conversational(Protocol):
    """A request of any front door, as conversations see it."""

    @property
    def turn(self) -> TurnRequest:
        """The turn the request asks for, with the whole history."""

    @property
    def messages(self) -> tuple[tuple[str, str], ...]:
        """Every message as (role, text), system ones included, markup stripped."""

    @property
    def message_images(self) -> tuple[tuple[Image, ...], ...]:
        """Each message's images, in the order of ``messages`` (empty: none
        at all). They sign their message too: the same text with other
        images is another message."""

    @property
    def json_mode(self) -> bool:
        """The answer must be one JSON object (asked in the turn's text)."""


@attrs.frozen
class Candidate:
    """One way to run the turn, and what the thread will have seen before it."""

    request: TurnRequest
    #: How many of the request's messages the thread has seen before this turn.
    before: int = 0
    #: The thread's earlier turns that stay.
    kept_turns: tuple[tuple[str, int], ...] = ()


@attrs.frozen
class Plan:
    """The turns to try, in order, and how to remember the one that ran."""

    kind: RequestKind
    candidates: tuple[Candidate, ...]
    key: str | None = None
    signatures: tuple[str, ...] = ()
    scratch: Path | None = None

    @property
    def requests(self) -> tuple[TurnRequest, ...]:
        return tuple(c.request for c in self.candidates)


class Conversations:
    def __init__(
        self,
        store: ConversationStore | None,
        *,
        workspace_root: str,
        header_names: Sequence[str] = ("x-openwebui-chat-id", "x-conversation-id"),
        busy_policy: str = "wait",
        wait_timeout_s: float = 30.0,
        task_model: str | None = None,
    ) -> None:
        self.store = store
        self.workspace_root = Path(workspace_root)
        self.header_names = tuple(header_names)
        self.busy_policy = busy_policy
        self.wait_timeout_s = wait_timeout_s
        self.task_model = task_model
        self._turns = KeyedLocks()
        #: Directories of the requests that keep nothing.
        self.scratch = ScratchDirs(self.workspace_root / "scratch")

    def classify(
        self, headers: Sequence[tuple[bytes, bytes]], body: dict[str, Any]
    ) -> tuple[RequestKind, str | None]:
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        if is_background_task(headers, body, messages or []):
            return RequestKind.TASK, None
        key = conversation_key(headers, body, self.header_names)
        if key is None or self.store is None:
            return RequestKind.STATELESS, None
        return RequestKind.CONVERSATION, key

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, key: str | None) -> AsyncIterator[None]:
        """Serialize a conversation's turns (a second turn/start would steer the first).

        A request that finds its conversation busy waits, like any queued
        request, at most ``wait_timeout_s`` (then 429 with Retry-After), or
        is refused at once (409) under ``busy_policy = "reject"``.
        """
        if key is None:
            yield
            return
        if self.busy_policy == "reject" and self._turns.locked(key):
            raise ApiError(
                409,
                "this conversation already has a turn running; retry when it has finished",
                type="invalid_request_error",
                code="conversation_busy",
            )
        async with self._turns.hold(key, timeout_s=self.wait_timeout_s) as held:
            if not held:
                raise ApiError(
                    429,
                    f"this conversation's previous turn is still running after "
                    f"{self.wait_timeout_s:g}s; retry when it has finished",
                    type="rate_limit_error",
                    code="conversation_busy",
                    retry_after_s=max(1.0, self.wait_timeout_s / 10),
                )
            yield

    @staticmethod
    def signatures(chat: Conversational) -> tuple[str, ...]:
        """The request's messages as a conversation's history is signed."""
        images = chat.message_images
        return tuple(
            signature(role, text, images[i] if i < len(images) else ())
            for i, (role, text) in enumerate(chat.messages)
        )

    async def plan(self, kind: RequestKind, key: str | None, chat: Conversational) -> Plan:
        turn = chat.turn
        if kind is RequestKind.TASK or kind is RequestKind.STATELESS or key is None:
            # A directory of its own, removed afterwards: what its commands
            # write goes nowhere else, and no other request can see it.
            scratch = self.scratch.take()
            request = attrs.evolve(turn, cwd=str(scratch))
            if kind is RequestKind.TASK:
                model = self.task_model or turn.model
                request = attrs.evolve(request, model=model, ephemeral=True)
            # Only the last message is the turn's; the others are history.
            before = max(len(chat.messages) - 1, 0)
            return Plan(kind, (Candidate(request, before),), scratch=scratch)
        assert self.store is not None
        cwd = self.workspace_root / "conversations" / workspace_name(key)
        cwd.mkdir(parents=True, exist_ok=True)
        messages = chat.messages
        signatures = self.signatures(chat)
        fresh = Candidate(
            attrs.evolve(turn, ephemeral=False, cwd=str(cwd)), before=len(messages) - 1
        )
        record = await self.store.get(key)
        on_thread = self._on_thread(record, messages, signatures, fresh.request)
        if on_thread is not None and turn_input_too_long(on_thread.request.text):
            # The new user messages together are more than codex takes as one
            # turn's input (the last alone was checked); a fresh thread gets
            # the earlier ones as history, which has no such limit.
            log.info(
                "conversation %s: its new messages exceed %d characters together; "
                "starting a fresh thread",
                key,
                MAX_TURN_INPUT_CHARS,
            )
            on_thread = None
        elif on_thread is None and record is not None:
            log.info("conversation %s diverged from its thread; starting a fresh one", key)
        candidates = (fresh,) if on_thread is None else (on_thread, fresh)
        return Plan(kind, candidates, key, signatures)

    @staticmethod
    def _on_thread(
        record: Record | None,
        messages: Sequence[tuple[str, str]],
        signatures: tuple[str, ...],
        fresh: TurnRequest,
    ) -> Candidate | None:
        """The turn on the conversation's own thread, if the request allows one.

        Either the request extends what the thread has seen (send only the
        new user messages), or it agrees with it up to one of the thread's
        turns and goes on with user messages only — an edited last message or
        a regenerated answer — and the thread is rolled back to that turn.
        """
        if record is None:
            return None

        def continuing(before: int) -> bool:
            rest = messages[before:]
            return (
                signatures[:before] == record.seen[:before]
                and bool(rest)
                and all(role == "user" for role, _ in rest)
            )

        def on(before: int, kept: tuple[tuple[str, int], ...], revert: str | None) -> Candidate:
            request = attrs.evolve(
                fresh,
                text="\n\n".join(text for _, text in messages[before:]),
                thread_id=record.thread_id,
                history=(),
                developer_instructions=None,
                revert_before_turn=revert,
            )
            return Candidate(request, before, kept)

        if continuing(len(record.seen)):
            return on(len(record.seen), record.turns, None)
        for index in range(len(record.turns) - 1, -1, -1):
            turn_id, before = record.turns[index]
            if continuing(before):
                return on(before, record.turns[:index], turn_id)
        return None

    async def remember(
        self, plan: Plan, ran: int, thread_id: str, turn_id: str, answer: str
    ) -> None:
        """After a completed turn: what its thread has now seen, turn by turn."""
        if plan.kind is not RequestKind.CONVERSATION or plan.key is None or self.store is None:
            return
        candidate = plan.candidates[ran]
        seen = (*plan.signatures, signature("assistant", answer))
        turns = (*candidate.kept_turns, (turn_id, candidate.before))
        await self.store.put(plan.key, Record(thread_id, seen, turns))

    async def finish(self, plan: Plan) -> None:
        if plan.scratch is not None:
            await self.scratch.give_back(plan.scratch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background upkeep (scratch directories made ahead, removed in
        batches), until cancelled."""
        await self.scratch.run(task_status=task_status)
