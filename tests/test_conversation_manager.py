"""Conversation planning against a real SQLite store, fed parsed requests
directly: which thread a turn runs on, what it is sent, what is remembered.
No codex, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from http_front.chat.request import ChatRequest, parse_chat_request
from http_front.conversation.identity import RequestKind, signature, workspace_name
from http_front.conversation.manager import Candidate, Conversations, Plan
from http_front.conversation.store import Record, SQLiteStore, open_store
from http_front.errors import ApiError
from http_front.turn_input import MAX_TURN_INPUT_CHARS
from supervisor import TurnRequest

KEY = "chat-1"
CHAT_HEADER = (b"x-openwebui-chat-id", KEY.encode())


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def chat(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    return parse_chat_request({"model": "gpt-test", "messages": list(messages), **fields})


def user_item(text: str) -> dict[str, object]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant_item(text: str) -> dict[str, object]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def sigs(*messages: tuple[str, str]) -> tuple[str, ...]:
    return tuple(signature(role, text) for role, text in messages)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    made = open_store(f"sqlite:///{tmp_path}/state/conversations.sqlite3", prefix="t:")
    assert isinstance(made, SQLiteStore)
    async with made:
        yield made


@pytest.fixture
def conversations(store: SQLiteStore, tmp_path: Path) -> Conversations:
    return Conversations(store, workspace_root=str(tmp_path / "work"), task_model="task-model")


def conversation_dir(tmp_path: Path, key: str = KEY) -> str:
    return str(tmp_path / "work" / "conversations" / workspace_name(key))


async def turn_one(conversations: Conversations) -> Plan:
    """The conversation's first turn: "one" answered "answer one" on thread-1."""
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, chat(user("one")))
    await conversations.remember(plan, 0, "thread-1", "turn-1", "answer one")
    return plan


async def two_turns(conversations: Conversations) -> None:
    """... then "two", answered "answer two" on the same thread."""
    await turn_one(conversations)
    request = chat(user("one"), assistant("answer one"), user("two"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    await conversations.remember(plan, 0, "thread-1", "turn-2", "answer two")


# -- classify -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fields", "expected"),
    [
        ([CHAT_HEADER], {}, (RequestKind.CONVERSATION, KEY)),
        ([(b"X-Conversation-Id", b" other ")], {}, (RequestKind.CONVERSATION, "other")),
        ([], {"metadata": {"conversation_id": "meta"}}, (RequestKind.CONVERSATION, "meta")),
        ([], {"metadata": {"conversation_id": ""}}, (RequestKind.STATELESS, None)),
        ([], {"user": "someone"}, (RequestKind.STATELESS, None)),
        ([], {}, (RequestKind.STATELESS, None)),
        ([CHAT_HEADER, (b"x-openwebui-task", b"title_generation")], {}, (RequestKind.TASK, None)),
    ],
)
async def test_classify(
    conversations: Conversations,
    headers: list[tuple[bytes, bytes]],
    fields: dict[str, Any],
    expected: tuple[RequestKind, str | None],
) -> None:
    body = {"messages": [user("hi")], "stream": True, **fields}
    assert conversations.classify(headers, body) == expected


async def test_openwebui_task_prompts_are_background_tasks(conversations: Conversations) -> None:
    task = {"messages": [user("### Task:\nGenerate a title.")], "stream": False}
    assert conversations.classify([CHAT_HEADER], task) == (RequestKind.TASK, None)
    # Streamed, or with more than the one message, it is the user's own turn.
    streamed = {**task, "stream": True}
    assert conversations.classify([CHAT_HEADER], streamed) == (RequestKind.CONVERSATION, KEY)
    longer = {"messages": [system("s"), user("### Task: x")]}
    assert conversations.classify([CHAT_HEADER], longer) == (RequestKind.CONVERSATION, KEY)


def test_without_a_store_every_request_is_stateless(tmp_path: Path) -> None:
    stateless = Conversations(None, workspace_root=str(tmp_path))
    body = {"messages": [user("hi")], "stream": True}
    assert stateless.classify([CHAT_HEADER], body) == (RequestKind.STATELESS, None)


# -- the first turn and extending it --------------------------------------------------------


async def test_the_first_turn_runs_on_a_fresh_persistent_thread(
    conversations: Conversations, store: SQLiteStore, tmp_path: Path
) -> None:
    request = chat(system("Be brief."), user("one"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    cwd = conversation_dir(tmp_path)
    assert plan == Plan(
        RequestKind.CONVERSATION,
        (
            Candidate(
                TurnRequest(
                    text="one",
                    model="gpt-test",
                    developer_instructions="Be brief.",
                    summary="auto",
                    ephemeral=False,
                    cwd=cwd,
                ),
                before=1,
            ),
        ),
        KEY,
        sigs(("system", "Be brief."), ("user", "one")),
    )
    assert await trio.Path(cwd).is_dir()
    await conversations.remember(plan, 0, "thread-1", "turn-1", "answer one")
    assert await store.get(KEY) == Record(
        "thread-1",
        sigs(("system", "Be brief."), ("user", "one"), ("assistant", "answer one")),
        (("turn-1", 1),),
    )
    await conversations.finish(plan)
    assert await trio.Path(cwd).is_dir()  # a conversation's directory stays


async def test_extending_the_history_sends_only_the_new_message_on_the_same_thread(
    conversations: Conversations, store: SQLiteStore, tmp_path: Path
) -> None:
    await turn_one(conversations)
    request = chat(user("one"), assistant("answer one"), user("two"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    on_thread, fresh = plan.candidates
    cwd = conversation_dir(tmp_path)
    assert on_thread == Candidate(
        TurnRequest(
            text="two",
            model="gpt-test",
            summary="auto",
            ephemeral=False,
            cwd=cwd,
            thread_id="thread-1",
        ),
        before=2,
        kept_turns=(("turn-1", 0),),
    )
    # If the thread cannot be resumed: a fresh one with the whole history.
    assert fresh == Candidate(
        TurnRequest(
            text="two",
            model="gpt-test",
            history=(user_item("one"), assistant_item("answer one")),
            summary="auto",
            ephemeral=False,
            cwd=cwd,
        ),
        before=2,
    )
    assert plan.requests == (on_thread.request, fresh.request)
    await conversations.remember(plan, 0, "thread-1", "turn-2", "answer two")
    assert await store.get(KEY) == Record(
        "thread-1",
        sigs(
            ("user", "one"),
            ("assistant", "answer one"),
            ("user", "two"),
            ("assistant", "answer two"),
        ),
        (("turn-1", 0), ("turn-2", 2)),
    )


async def test_several_new_user_messages_are_sent_together(conversations: Conversations) -> None:
    await turn_one(conversations)
    request = chat(user("one"), assistant("answer one"), user("two"), user("three"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    assert plan.requests[0].text == "two\n\nthree"
    assert plan.requests[0].thread_id == "thread-1"
    assert plan.candidates[0].before == 2
    assert plan.requests[1].text == "three"  # the fresh thread gets "two" as history
    assert plan.requests[1].history[-1] == user_item("two")


async def test_new_messages_too_long_together_run_on_a_fresh_thread(
    conversations: Conversations,
) -> None:
    await turn_one(conversations)
    half = "x" * (MAX_TURN_INPUT_CHARS // 2 + 1)
    request = chat(user("one"), assistant("answer one"), user(half), user(half))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    (fresh,) = plan.candidates
    assert fresh.request.thread_id is None
    assert fresh.request.text == half
    assert len(fresh.request.history) == 3


async def test_the_answer_as_the_client_shows_it_still_matches(
    conversations: Conversations,
) -> None:
    """The remembered answer is what the client got (markup and all); the
    client sends it back with whitespace changed."""
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, chat(user("one")))
    shown = (
        "<think>\nhmm\n</think>\n\n"
        '<details type="tool_calls" done="true" name="shell" arguments="{}" result="{}">\n'
        "<summary>Ran `ls`</summary>\n</details>\n\nThe   answer\n"
    )
    await conversations.remember(plan, 0, "thread-1", "turn-1", shown)
    request = chat(user(" one "), assistant(shown.replace("The   answer", "The answer")), user("2"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    assert plan.requests[0].thread_id == "thread-1"
    assert plan.requests[0].text == "2"
    assert plan.requests[0].revert_before_turn is None


# -- rolling back -------------------------------------------------------------------------


async def test_regenerating_the_last_answer_rolls_back_its_turn(
    conversations: Conversations, store: SQLiteStore
) -> None:
    await two_turns(conversations)
    request = chat(user("one"), assistant("answer one"), user("two"))  # again
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    on_thread, fresh = plan.candidates
    assert on_thread.request.thread_id == "thread-1"
    assert on_thread.request.revert_before_turn == "turn-2"
    assert on_thread.request.text == "two"
    assert on_thread.request.history == ()
    assert on_thread.before == 2
    assert on_thread.kept_turns == (("turn-1", 0),)
    assert fresh.request.thread_id is None
    assert fresh.request.revert_before_turn is None
    await conversations.remember(plan, 0, "thread-1", "turn-3", "another answer two")
    record = await store.get(KEY)
    assert record is not None
    assert record.turns == (("turn-1", 0), ("turn-3", 2))
    assert record.seen[-1] == signature("assistant", "another answer two")


async def test_regenerating_the_first_answer_rolls_back_to_the_start(
    conversations: Conversations,
) -> None:
    await turn_one(conversations)
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, chat(user("one")))
    on_thread = plan.candidates[0]
    assert on_thread.request.thread_id == "thread-1"
    assert on_thread.request.revert_before_turn == "turn-1"
    assert on_thread.request.text == "one"
    assert (on_thread.before, on_thread.kept_turns) == (0, ())


async def test_editing_the_first_user_message_rolls_back_to_it(
    conversations: Conversations,
) -> None:
    await two_turns(conversations)
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, chat(user("ONE, edited")))
    on_thread, fresh = plan.candidates
    assert on_thread.request.thread_id == "thread-1"
    assert on_thread.request.revert_before_turn == "turn-1"
    assert on_thread.request.text == "ONE, edited"
    assert (on_thread.before, on_thread.kept_turns) == (0, ())
    assert fresh.request.history == ()


async def test_editing_the_last_user_message_rolls_back_its_turn(
    conversations: Conversations,
) -> None:
    await two_turns(conversations)
    request = chat(user("one"), assistant("answer one"), user("two, edited"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    on_thread = plan.candidates[0]
    assert on_thread.request.revert_before_turn == "turn-2"
    assert on_thread.request.text == "two, edited"
    assert on_thread.kept_turns == (("turn-1", 0),)


async def test_continuing_from_an_earlier_point_with_several_messages(
    conversations: Conversations,
) -> None:
    await two_turns(conversations)
    request = chat(user("one"), assistant("answer one"), user("two'"), user("two''"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    assert plan.requests[0].revert_before_turn == "turn-2"
    assert plan.requests[0].text == "two'\n\ntwo''"


# -- starting over ------------------------------------------------------------------------


async def test_an_edited_answer_starts_a_fresh_thread_with_the_history(
    conversations: Conversations, store: SQLiteStore
) -> None:
    await two_turns(conversations)
    request = chat(user("one"), assistant("answer one, EDITED"), user("two"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    (fresh,) = plan.candidates
    assert fresh.request.thread_id is None
    assert fresh.request.revert_before_turn is None
    assert fresh.request.ephemeral is False
    assert fresh.request.history == (user_item("one"), assistant_item("answer one, EDITED"))
    assert fresh.before == 2
    # The mapping follows the fresh thread.
    await conversations.remember(plan, 0, "thread-2", "turn-9", "answer")
    assert await store.get(KEY) == Record(
        "thread-2",
        sigs(
            ("user", "one"),
            ("assistant", "answer one, EDITED"),
            ("user", "two"),
            ("assistant", "answer"),
        ),
        (("turn-9", 2),),
    )


async def test_changed_instructions_start_a_fresh_thread(conversations: Conversations) -> None:
    await turn_one(conversations)
    request = chat(system("New rules."), user("one"), assistant("answer one"), user("two"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    (fresh,) = plan.candidates
    assert fresh.request.thread_id is None
    assert fresh.request.developer_instructions == "New rules."


async def test_an_unknown_key_starts_a_fresh_thread_seeded_with_history(
    conversations: Conversations, tmp_path: Path
) -> None:
    request = chat(user("one"), assistant("answer one"), user("two"))
    plan = await conversations.plan(RequestKind.CONVERSATION, "never-seen", request)
    (fresh,) = plan.candidates
    assert fresh.request.thread_id is None
    assert fresh.request.history == (user_item("one"), assistant_item("answer one"))
    assert fresh.request.cwd == conversation_dir(tmp_path, "never-seen")
    assert plan.key == "never-seen"


async def test_remembering_the_fresh_candidate_after_the_thread_was_gone(
    conversations: Conversations, store: SQLiteStore
) -> None:
    await turn_one(conversations)
    request = chat(user("one"), assistant("answer one"), user("two"))
    plan = await conversations.plan(RequestKind.CONVERSATION, KEY, request)
    await conversations.remember(plan, 1, "thread-new", "turn-1", "answer two")
    record = await store.get(KEY)
    assert record is not None
    assert record.thread_id == "thread-new"
    assert record.turns == (("turn-1", 2),)  # the old thread's turns are gone
    assert len(record.seen) == 4


# -- requests that leave mappings alone ---------------------------------------------------


async def test_a_background_task_runs_ephemeral_in_a_scratch_directory(
    conversations: Conversations, store: SQLiteStore, tmp_path: Path
) -> None:
    await turn_one(conversations)
    before = await store.get(KEY)
    request = chat(user("### Task:\nGenerate a title."))
    plan = await conversations.plan(RequestKind.TASK, None, request)
    (only,) = plan.candidates
    scratch = plan.scratch
    assert scratch is not None
    assert scratch.parent == tmp_path / "work" / "scratch"
    assert await trio.Path(scratch).is_dir()
    assert only.request == TurnRequest(
        text="### Task:\nGenerate a title.",
        model="task-model",
        summary="auto",
        ephemeral=True,
        cwd=str(scratch),
    )
    assert plan.key is None
    await conversations.remember(plan, 0, "thread-task", "turn-task", "A title")
    assert await store.get(KEY) == before
    await conversations.finish(plan)
    assert not await trio.Path(scratch).exists()


async def test_a_task_without_a_task_model_keeps_the_requested_one(tmp_path: Path) -> None:
    plain = Conversations(None, workspace_root=str(tmp_path))
    plan = await plain.plan(RequestKind.TASK, None, chat(user("### Task: tags")))
    assert plan.requests[0].model == "gpt-test"
    assert plan.requests[0].ephemeral is True
    await plain.finish(plan)


async def test_a_stateless_request_replays_its_history_in_a_scratch_directory(
    conversations: Conversations, store: SQLiteStore
) -> None:
    request = chat(user("one"), assistant("answer one"), user("two"))
    plan = await conversations.plan(RequestKind.STATELESS, None, request)
    (only,) = plan.candidates
    assert plan.scratch is not None
    assert only.request == TurnRequest(
        text="two",
        model="gpt-test",
        history=(user_item("one"), assistant_item("answer one")),
        summary="auto",
        ephemeral=True,
        cwd=str(plan.scratch),
    )
    await conversations.remember(plan, 0, "thread-x", "turn-x", "answer two")
    assert await store.get(KEY) is None
    await conversations.finish(plan)
    assert not await trio.Path(plan.scratch).exists()


async def test_two_scratch_directories_are_apart(conversations: Conversations) -> None:
    first = await conversations.plan(RequestKind.STATELESS, None, chat(user("a")))
    second = await conversations.plan(RequestKind.STATELESS, None, chat(user("b")))
    assert first.scratch != second.scratch
    await conversations.finish(first)
    await conversations.finish(second)


# -- one turn at a time -------------------------------------------------------------------


async def test_a_busy_conversation_is_refused_under_the_reject_policy(tmp_path: Path) -> None:
    conversations = Conversations(None, workspace_root=str(tmp_path), busy_policy="reject")
    async with conversations.one_at_a_time("k"):
        with pytest.raises(ApiError) as caught:
            async with conversations.one_at_a_time("k"):
                pytest.fail("entered a busy conversation")
        async with conversations.one_at_a_time("other"), conversations.one_at_a_time(None):
            pass
    assert (caught.value.status, caught.value.code) == (409, "conversation_busy")
    async with conversations.one_at_a_time("k"):
        pass  # free again


async def test_a_busy_conversation_is_waited_for_at_most_the_timeout(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    conversations = Conversations(None, workspace_root=str(tmp_path), wait_timeout_s=30)
    done = trio.Event()

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with conversations.one_at_a_time("k"):
            task_status.started()
            await done.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold)
        start = trio.current_time()
        with pytest.raises(ApiError) as caught:
            async with conversations.one_at_a_time("k"):
                pytest.fail("entered a busy conversation")
        waited = trio.current_time() - start
        done.set()
    assert waited == pytest.approx(30)
    error = caught.value
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "conversation_busy")
    assert error.retry_after_s == 3.0


async def test_a_waiting_turn_goes_when_the_previous_one_is_done(tmp_path: Path) -> None:
    conversations = Conversations(None, workspace_root=str(tmp_path), wait_timeout_s=30)
    order: list[str] = []
    release = {"first": trio.Event(), "second": trio.Event()}

    async def turn(name: str) -> None:
        async with conversations.one_at_a_time("k"):
            order.append(f"{name} in")
            await release[name].wait()
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(turn, "second")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["first in"]  # the second waits
        release["second"].set()
        release["first"].set()
    assert order == ["first in", "first out", "second in", "second out"]
