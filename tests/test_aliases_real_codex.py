"""Model aliases on the real binary: what reaches the model, and what a
read-only alias lets commands do.

The scripted model logs every request codex sends it; its ``exec`` scenario
makes codex run a command, whose output comes back to it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import trio

from fixtures.codex_home import MODEL_SLUG
from fixtures.scenarios import tool_output_text
from fixtures.scripted_model import ScriptedModelServer
from http_front.models import Alias
from tests.helpers import RunningService, real_service

pytestmark = pytest.mark.real_codex
TIMEOUT_S = 120

#: Writes a file into the turn's own directory (the conversation's), and says so.
WRITE = "echo written > probe.txt && echo WROTE-IT"


async def run_command(
    svc: RunningService,
    model: ScriptedModelServer,
    alias: str,
    cmd: str,
    conversation: list[dict[str, str]],
) -> tuple[str, str | None]:
    """Have the model run ``cmd`` in the next turn of ``conversation`` (its
    messages so far, extended here) for ``alias``: the tool output codex handed
    back to the model, and the session (codex's thread) it came from."""
    before = len(model.model.requests)
    marker = f"[scenario:exec login=0 cmd={shlex.quote(cmd)}]"
    conversation.append({"role": "user", "content": f"{marker} go"})
    response = await svc.client.post(
        "/v1/chat/completions",
        json={"model": alias, "stream": False, "messages": conversation},
        headers={"X-Conversation-Id": str(id(conversation))},
    )
    assert response.status_code == 200, response.text
    conversation.append(response.json()["choices"][0]["message"])
    requests = model.model.requests[before:]
    outputs = [
        tool_output_text(item)
        for request in requests
        for item in request.body["input"]
        if item.get("type") == "function_call_output"
    ]
    assert outputs, f"codex ran no command for {cmd!r}"
    return outputs[-1], requests[-1].headers.get("session-id")


async def test_an_alias_sends_its_model_effort_and_instructions(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    alias = Alias(
        "careful",
        model=MODEL_SLUG,
        effort="low",
        summary="concise",
        instructions="ALIAS-INSTRUCTIONS-MARKER: answer carefully.",
    )
    with trio.fail_after(TIMEOUT_S):
        async with real_service(
            tmp_path, codex_bin, scripted_model, aliases=(alias,), default_reasoning_effort="high"
        ) as svc:
            listed = (await svc.client.get("/v1/models")).json()["data"]
            answer = await svc.client.post(
                "/v1/chat/completions",
                json={
                    "model": "careful",
                    "stream": False,
                    "messages": [
                        {"role": "system", "content": "CLIENT-INSTRUCTIONS-MARKER"},
                        {"role": "user", "content": "[scenario:plain] hello"},
                    ],
                },
            )
            plain = await svc.client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL_SLUG,
                    "stream": False,
                    "messages": [{"role": "user", "content": "[scenario:plain] hello"}],
                },
            )
    assert {(m["id"], m["owned_by"]) for m in listed} == {
        (MODEL_SLUG, "codex"),
        ("careful", "codex-bridge"),
    }
    assert answer.status_code == 200, answer.text
    assert plain.status_code == 200, plain.text
    aliased, unaliased = (r.body for r in scripted_model.model.requests)
    assert aliased["model"] == MODEL_SLUG
    assert aliased["reasoning"]["effort"] == "low"  # the alias's, not the service default
    assert aliased["reasoning"]["summary"] == "concise"
    developer = [
        part["text"]
        for item in aliased["input"]
        if item.get("role") == "developer"
        for part in item["content"]
    ]
    joined = "\n".join(developer)
    assert "ALIAS-INSTRUCTIONS-MARKER" in joined
    assert "CLIENT-INSTRUCTIONS-MARKER" in joined
    # without the alias: the service's default effort, no alias instructions
    assert unaliased["reasoning"]["effort"] == "high"
    assert "ALIAS-INSTRUCTIONS-MARKER" not in str(unaliased["input"])


async def test_a_read_only_alias_cannot_write_and_the_plain_model_can_again(
    tmp_path: Path, codex_bin: Path, scripted_model: ScriptedModelServer
) -> None:
    reader = Alias("reader", model=MODEL_SLUG, read_only=True)
    read_only: list[dict[str, str]] = []
    plain: list[dict[str, str]] = []
    with trio.fail_after(TIMEOUT_S):
        async with real_service(tmp_path, codex_bin, scripted_model, aliases=(reader,)) as svc:
            workspace = trio.Path(tmp_path / "workspace" / "conversations")
            refused, thread = await run_command(svc, scripted_model, "reader", WRITE, read_only)
            (ro_dir,) = await workspace.iterdir()
            read, _ = await run_command(svc, scripted_model, "reader", "ls -a", read_only)
            allowed, _ = await run_command(svc, scripted_model, MODEL_SLUG, WRITE, plain)
            # the same conversation, continued on its thread with the plain model
            again, same_thread = await run_command(
                svc, scripted_model, MODEL_SLUG, WRITE, read_only
            )
            (plain_dir,) = [d for d in await workspace.iterdir() if d != ro_dir]
            wrote_plain = await (plain_dir / "probe.txt").exists()
            wrote_again = await (ro_dir / "probe.txt").exists()
            await (ro_dir / "probe.txt").unlink(missing_ok=True)
            # and back to the alias on that thread: read-only once more
            refused_again, last_thread = await run_command(
                svc, scripted_model, "reader", WRITE, read_only
            )
            wrote_ro = await (ro_dir / "probe.txt").exists()
    print(f"\nread-only turn: {refused.strip().splitlines()[-1]!r}")
    assert "WROTE-IT" not in refused
    assert "." in read.split()  # it ran: commands may still read
    assert "WROTE-IT" in allowed
    assert wrote_plain
    assert thread is not None
    assert thread == same_thread == last_thread
    assert "WROTE-IT" in again, again
    assert wrote_again
    assert "WROTE-IT" not in refused_again
    assert not wrote_ro
