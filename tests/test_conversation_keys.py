"""A conversation key of any shape names a directory inside workspace_dir, never outside."""

from __future__ import annotations

from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st

from http_front.conversation.identity import workspace_name
from tests.helpers import (
    LineLog,
    fake,
    make_settings,
    running_service,
)

NASTY_KEYS = [
    "../../../etc",
    "/etc/passwd",
    "..",
    ".",
    "a/../../b",
    "x" * 10_000,
    "nul\x00in the middle",
    "\x00",
    "ünïcödé 会話 🙂",
    "\\..\\windows",
    "con",
    " ",
]


@given(st.text(min_size=1, max_size=12_000))
def test_every_key_names_one_plain_directory(key: str) -> None:
    name = workspace_name(key)
    assert len(name) == 20
    assert all(c in "0123456789abcdef" for c in name)


def test_nasty_keys_stay_inside_and_apart(tmp_path: Path) -> None:
    root = (tmp_path / "workspace" / "conversations").resolve()
    names = {workspace_name(key) for key in NASTY_KEYS}
    assert len(names) == len(NASTY_KEYS)
    for name in names:
        assert (root / name).resolve().parent == root


async def test_a_key_from_the_body_never_leads_a_thread_outside(tmp_path: Path) -> None:
    log = LineLog()
    settings = make_settings(tmp_path)
    workspace = Path(await trio.Path(settings.workspace_dir).resolve())
    with trio.fail_after(60):
        async with running_service(settings, fake("ok", tap=log)) as svc:
            for key in NASTY_KEYS:
                response = await svc.client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "fake-model",
                        "metadata": {"conversation_id": key},
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                assert response.status_code == 200, (key[:40], response.text)
    cwds = [Path(message["params"]["cwd"]) for message in log.sent("thread/start")]
    assert len(cwds) == len(NASTY_KEYS)
    assert len(set(cwds)) == len(NASTY_KEYS)  # one directory per conversation
    for cwd in cwds:
        assert cwd.parent == workspace / "conversations"
        assert await trio.Path(cwd).is_dir()
