"""Conversation continuity against the real binary, read from what the model received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from fixtures.scenarios import PLAIN_TEXT
from fixtures.scripted_model import RecordedRequest, ScriptedModelServer
from tests.helpers import (
    RunningService,
    real_service,
    redis_url,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.real_codex
TIMEOUT_S = 90
CHAT = "X-OpenWebUI-Chat-Id"


def seen_by_model(request: RecordedRequest) -> list[tuple[str, str]]:
    """(role, text) of the user and assistant messages the model received."""
    out = []
    for item in request.body["input"]:
        if item.get("type") != "message" or item.get("role") not in ("user", "assistant"):
            continue
        for part in item["content"]:
            text = part.get("text", "")
            if not text.startswith("<"):  # codex's own <environment_context> etc.
                out.append((item["role"], text))
    return out


async def say(
    svc: RunningService, messages: list[dict[str, str]], key: str | None, **extra: Any
) -> dict[str, Any]:
    headers = {CHAT: key} if key else {}
    response = await svc.client.post(
        "/v1/chat/completions",
        json={"model": "scripted-model", "messages": messages, "stream": False, **extra},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


async def three_turns(svc: RunningService, key: str | None) -> list[dict[str, Any]]:
    history: list[dict[str, str]] = []
    answers = []
    for n in (1, 2, 3):
        history.append(user(f"[scenario:plain] question {n}"))
        body = await say(svc, history, key)
        answers.append(body)
        history.append(assistant(body["choices"][0]["message"]["content"]))
    return answers


@pytest.mark.parametrize("key", ["chat-3turns", None], ids=["with-key", "stateless"])
async def test_three_turns_model_sees_each_message_once(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer, key: str | None
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            answers = await three_turns(svc, key)
    requests = scripted_model.model.requests
    assert len(requests) == 3
    assert seen_by_model(requests[2]) == [
        ("user", "[scenario:plain] question 1"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] question 2"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] question 3"),
    ]
    threads = {r.headers.get("session-id") for r in requests}
    # with a key one codex thread carries the chat; without one, a thread per request
    assert len(threads) == (1 if key else 3)
    usage = [a["usage"] for a in answers]
    prompt = [u["prompt_tokens"] for u in usage]
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usage]
    print(f"\n{'with' if key else 'without'} a key: prompt tokens {prompt}, cached {cached}")


async def test_edited_message_rolls_the_thread_back(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            a1 = await say(svc, [user("[scenario:plain] one")], "chat-edit")
            first = a1["choices"][0]["message"]["content"]
            await say(
                svc,
                [user("[scenario:plain] one"), assistant(first), user("[scenario:plain] two")],
                "chat-edit",
            )
            # the user edits their first message
            await say(svc, [user("[scenario:plain] ONE, edited")], "chat-edit")
            # and continues from there
            a4 = await say(
                svc,
                [
                    user("[scenario:plain] ONE, edited"),
                    assistant(PLAIN_TEXT),
                    user("[scenario:plain] three"),
                ],
                "chat-edit",
            )
    requests = scripted_model.model.requests
    assert seen_by_model(requests[2]) == [("user", "[scenario:plain] ONE, edited")]
    assert seen_by_model(requests[3]) == [
        ("user", "[scenario:plain] ONE, edited"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] three"),
    ]
    # one thread all along: rolled back to before its first turn (thread/revert)
    assert len({r.headers.get("session-id") for r in requests}) == 1
    assert a4["choices"][0]["message"]["content"] == PLAIN_TEXT


async def test_regenerate_answers_again_without_the_old_answer(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            await say(svc, [user("[scenario:plain] hi")], "chat-regen")
            await say(svc, [user("[scenario:plain] hi")], "chat-regen")  # regenerate
    first, second = scripted_model.model.requests
    assert seen_by_model(second) == [("user", "[scenario:plain] hi")]
    assert first.headers.get("session-id") == second.headers.get("session-id")  # rolled back


async def test_background_tasks_leave_the_conversation_alone(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    task = "### Task:\nGenerate a title.\n<chat_history>\nUSER: hi\n</chat_history>"
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            a1 = await say(svc, [user("[scenario:plain] hi")], "chat-task")
            before = [r.headers.get("session-id") for r in scripted_model.model.requests]
            await say(svc, [user(task)], "chat-task", max_tokens=1000)
            response = await svc.client.post(
                "/v1/chat/completions",
                json={
                    "model": "scripted-model",
                    "stream": False,
                    "messages": [user("[scenario:plain] tags please")],
                },
                headers={CHAT: "chat-task", "X-OpenWebUI-Task": "tags_generation"},
            )
            assert response.status_code == 200
            await say(
                svc,
                [
                    user("[scenario:plain] hi"),
                    assistant(a1["choices"][0]["message"]["content"]),
                    user("[scenario:plain] next"),
                ],
                "chat-task",
            )
    requests = scripted_model.model.requests
    sessions = [r.headers.get("session-id") for r in requests]
    # the two tasks ran on threads of their own; the chat went on on its thread
    assert sessions[3] == before[0]
    assert len({sessions[0], sessions[1], sessions[2]}) == 3
    assert seen_by_model(requests[1]) == [("user", task)]
    assert seen_by_model(requests[3]) == [
        ("user", "[scenario:plain] hi"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] next"),
    ]


async def test_conversation_survives_a_service_restart(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    history = [user("[scenario:plain] before the restart")]
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            body = await say(svc, history, "chat-restart")
        history += [
            assistant(body["choices"][0]["message"]["content"]),
            user("[scenario:plain] after the restart"),
        ]
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            await say(svc, history, "chat-restart")
    first, second = scripted_model.model.requests
    assert first.headers.get("session-id") == second.headers.get("session-id")  # resumed
    assert seen_by_model(second) == [
        ("user", "[scenario:plain] before the restart"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] after the restart"),
    ]


async def test_busy_conversation_can_be_refused(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with (
            real_service(tmp_path, codex_bin, scripted_model, conversation_busy="reject") as svc,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(
                say, svc, [user("[scenario:slow deltas=10 delay_ms=100] long")], "chat-busy"
            )
            await scripted_model.model.wait_for_requests(1)
            refused = await svc.client.post(
                "/v1/chat/completions",
                json={"model": "scripted-model", "messages": [user("again")]},
                headers={CHAT: "chat-busy"},
            )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "conversation_busy"


async def test_each_conversation_has_its_own_workspace(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    pwd = '[scenario:exec login=0 cmd="pwd"] where am I'
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            a = await say(svc, [user(pwd)], "chat-a")
            b = await say(svc, [user(pwd)], "chat-b")
            s = await say(svc, [user(pwd)], None)
    workspace = tmp_path / "workspace"

    def cwd_of(body: dict[str, Any]) -> Path:
        content = body["choices"][0]["message"]["content"]
        line = content.split("$ pwd\n", 1)[1].split("\n", 1)[0]
        return Path(line)

    assert cwd_of(a).parent == cwd_of(b).parent == workspace / "conversations"
    assert cwd_of(a) != cwd_of(b)
    assert cwd_of(a).is_dir()
    assert cwd_of(s).parent == workspace / "scratch"
    assert not cwd_of(s).exists()  # removed after the request


async def test_two_instances_share_one_redis(
    tmp_path: Path,
    codex_bin: Path,
    scripted_model: ScriptedModelServer,
    redis_url: str,  # noqa: F811
) -> None:
    """Turns alternate between two services (own pools, same CODEX_HOME): the
    model always sees the whole conversation, and no user sees an error."""
    state = {"state_url": redis_url, "state_key_prefix": f"two-{tmp_path.name}:"}
    history: list[dict[str, str]] = []
    with trio.fail_after(TIMEOUT_S):
        async with (
            real_service(tmp_path, codex_bin, scripted_model, **state) as a,
            real_service(
                tmp_path / "b",
                codex_bin,
                scripted_model,
                codex_home=str(tmp_path / "codex-home"),
                **state,
            ) as b,
        ):
            for n, svc in enumerate((a, b, a, b), start=1):
                history.append(user(f"[scenario:plain] turn {n}"))
                body = await say(svc, history, "chat-two")
                history.append(assistant(body["choices"][0]["message"]["content"]))
    last = scripted_model.model.requests[-1]
    expected: list[tuple[str, str]] = []
    for n in (1, 2, 3, 4):
        expected.append(("user", f"[scenario:plain] turn {n}"))
        if n < 4:
            expected.append(("assistant", PLAIN_TEXT))
    assert seen_by_model(last) == expected


async def test_thread_codex_no_longer_knows_is_replaced_by_a_seeded_one(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """The mapping survives but CODEX_HOME was wiped: the user never sees an error."""
    state = {"state_url": f"sqlite:///{tmp_path / 'shared-state.sqlite3'}"}
    history = [user("[scenario:plain] first")]
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path / "old", codex_bin, scripted_model, **state) as svc:
            body = await say(svc, history, "chat-lost")
        history += [
            assistant(body["choices"][0]["message"]["content"]),
            user("[scenario:plain] second"),
        ]
        async with real_service(tmp_path / "new", codex_bin, scripted_model, **state) as svc:
            await say(svc, history, "chat-lost")
    first, second = scripted_model.model.requests
    assert first.headers.get("session-id") != second.headers.get("session-id")
    assert seen_by_model(second) == [
        ("user", "[scenario:plain] first"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] second"),
    ]


async def test_history_that_cannot_be_rolled_back_gets_a_fresh_seeded_thread(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """An earlier *answer* changed: no turn of the thread matches, so a new
    thread is seeded with the request's history."""
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model) as svc:
            await say(svc, [user("[scenario:plain] one")], "chat-seed")
            await say(
                svc,
                [
                    user("[scenario:plain] one"),
                    assistant("an answer I rewrote"),
                    user("[scenario:plain] two"),
                ],
                "chat-seed",
            )
    first, second = scripted_model.model.requests
    assert first.headers.get("session-id") != second.headers.get("session-id")
    assert seen_by_model(second) == [
        ("user", "[scenario:plain] one"),
        ("assistant", "an answer I rewrote"),
        ("user", "[scenario:plain] two"),
    ]


async def loaded_threads(svc: RunningService) -> list[list[str]]:
    """What each child holds loaded, as codex itself lists it."""
    lists = []
    for child in svc.handle.pool.children:
        result = await child.client.peer.request("thread/loaded/list", {})
        lists.append(sorted(result["data"]))
    return lists


async def test_released_threads_leave_codex_and_come_back_on_the_next_turn(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    """One-off threads are unloaded after their turn; a conversation's thread is
    unloaded when released and resumed, with its history, on its next turn."""
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model, pool_size=2) as svc:
            for i in range(6):
                await say(svc, [user(f"[scenario:plain] one-off {i}")], None)
            # codex unloads a thread a few milliseconds after the bridge lets go
            for _ in range(40):
                if (after_one_offs := await loaded_threads(svc)) == [[], []]:
                    break
                await trio.sleep(0.05)
            history = [user("[scenario:plain] question 1")]
            a1 = await say(svc, history, "chat-release")
            history.append(assistant(a1["choices"][0]["message"]["content"]))
            mux = svc.handle.multiplexer
            (thread,) = [t for c in svc.handle.pool.children for t in c.threads]
            while_held = await loaded_threads(svc)
            assert await mux.release_thread(thread)
            after_release = await loaded_threads(svc)
            history.append(user("[scenario:plain] question 2"))
            await say(svc, history, "chat-release")
            resumed_by = mux.owner(thread)
    assert after_one_offs == [[], []]
    assert sorted(t for held in while_held for t in held) == [thread]
    assert after_release == [[], []]
    assert resumed_by is not None
    last = scripted_model.model.requests[-1]
    assert last.headers.get("session-id") == thread
    assert seen_by_model(last) == [
        ("user", "[scenario:plain] question 1"),
        ("assistant", PLAIN_TEXT),
        ("user", "[scenario:plain] question 2"),
    ]
