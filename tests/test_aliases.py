"""Model aliases: the config file's ``[aliases.NAME]`` tables, their listing
in ``/v1/models``, and what a request naming one sends codex (fake children)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from codex_bridge.config import ConfigError, Settings, load_settings
from codex_bridge.service import front_options
from http_front.models import Alias
from tests.helpers import LineLog, chat_body, fake, make_settings, running_service

TIMEOUT_S = 30


def load(tmp_path: Path, text: str, **environ: str) -> Settings:
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    return load_settings(config_file=config, environ=environ)


def test_an_alias_table_becomes_an_alias(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
[aliases.coder]
model = "gpt-5.5"
effort = "high"
summary = "detailed"
instructions = "Answer in French."
sandbox = "read-only"
approval_policy = "never"

[aliases."fast:latest"]
effort = "low"
""",
    )
    assert settings.aliases == (
        Alias(
            name="coder",
            model="gpt-5.5",
            effort="high",
            summary="detailed",
            instructions="Answer in French.",
            read_only=True,
            approval_policy="never",
        ),
        Alias(name="fast:latest", effort="low"),
    )
    assert front_options(settings).aliases == {a.name: a for a in settings.aliases}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[aliases.coder]\nmodle = "x"\n', "alias 'coder': unknown key 'modle'"),
        ('[aliases.coder]\neffort = "extreme"\n', "alias 'coder': key 'effort' must be one of"),
        ('[aliases.coder]\nsummary = "short"\n', "alias 'coder': key 'summary' must be one of"),
        (
            '[aliases.coder]\nsandbox = "danger-full-access"\n',
            "alias 'coder': key 'sandbox' must be one of read-only, workspace-write",
        ),
        (
            '[aliases.coder]\napproval_policy = "on-failure"\n',
            "alias 'coder': key 'approval_policy' must be one of untrusted, on-request, never",
        ),
        ("[aliases.coder]\nmodel = 5\n", "alias 'coder': key 'model' must be a non-empty string"),
        ('[aliases.coder]\nmodel = ""\n', "alias 'coder': key 'model' must be a non-empty string"),
        ('[aliases."a/b"]\nmodel = "x"\n', "alias 'a/b': a name is 1-64 letters"),
        ('[aliases."my model"]\n', "alias 'my model': a name is"),
        ('aliases = "coder"\n', "'aliases' .*expected tables \\[aliases.NAME\\]"),
        ('[aliases]\ncoder = "gpt-5.5"\n', "alias 'coder': expected a table"),
    ],
)
def test_a_bad_alias_stops_start_up_naming_it(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, table)


def test_an_alias_may_not_be_wider_than_the_service_sandbox(tmp_path: Path) -> None:
    table = '[aliases.writer]\nsandbox = "workspace-write"\n'
    with pytest.raises(ConfigError, match="wider than the service's sandbox_mode 'read-only'"):
        load(tmp_path, 'sandbox_mode = "read-only"\n' + table)
    # the sandbox_mode may come from anywhere: the environment too
    with pytest.raises(ConfigError, match="alias 'writer'"):
        load(tmp_path, table, CODEX_BRIDGE_SANDBOX_MODE="read-only")
    assert load(tmp_path, table).aliases[0].read_only is False
    # read-only cannot be given without a sandbox at all
    reader = '[aliases.reader]\nsandbox = "read-only"\n'
    with pytest.raises(ConfigError, match="'read-only' cannot be enforced"):
        load(tmp_path, 'sandbox_mode = "danger-full-access"\n' + reader)
    assert load(tmp_path, 'sandbox_mode = "read-only"\n' + reader).aliases[0].read_only


def test_an_alias_is_defined_once() -> None:
    with pytest.raises(ConfigError, match="alias 'coder': defined more than once"):
        Settings(aliases=(Alias("coder"), Alias("coder", effort="low")))


async def test_models_lists_aliases_beside_codex_models(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    aliases = (Alias("coder", model="fake-model", effort="high"), Alias("fake-model"))
    settings = make_settings(tmp_path, aliases=aliases, sandbox_mode="danger-full-access")
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok")) as svc:
            listed = (await svc.client.get("/v1/models")).json()["data"]
            coder = await svc.client.get("/v1/models/coder")
            shadowing = await svc.client.get("/v1/models/fake-model")
            unknown = await svc.client.get("/v1/models/no-such-model")
            warned = [r.getMessage() for r in caplog.records if "alias" in r.getMessage()]
    # the alias named like codex's model replaces it: listed once, as the alias
    assert [(m["id"], m["owned_by"]) for m in listed] == [
        ("coder", "codex-bridge"),
        ("fake-model", "codex-bridge"),
    ]
    assert coder.status_code == 200
    assert coder.json() == {
        "id": "coder",
        "object": "model",
        "created": 0,
        "owned_by": "codex-bridge",
    }
    assert shadowing.json()["owned_by"] == "codex-bridge"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert warned == [
        "alias 'fake-model' has the name of a codex model: requests for 'fake-model' get the alias"
    ]


async def test_a_request_for_an_alias_gets_its_settings(tmp_path: Path) -> None:
    tap = LineLog()
    aliases = (
        Alias(
            "coder",
            model="fake-model",
            effort="high",
            summary="detailed",
            instructions="ALIAS-INSTRUCTIONS",
            approval_policy="never",
        ),
    )
    settings = make_settings(tmp_path, aliases=aliases, sandbox_mode="danger-full-access")
    with trio.fail_after(TIMEOUT_S):
        async with running_service(settings, fake("ok", tap=tap)) as svc:
            body: dict[str, Any] = dict(chat_body("hi", model="coder", stream=False))
            body["messages"] = [
                {"role": "system", "content": "CLIENT-INSTRUCTIONS"},
                *body["messages"],
            ]
            answer = await svc.client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "coder"
    (thread,) = tap.sent("thread/start")
    (turn,) = tap.sent("turn/start")
    assert thread["params"]["model"] == "fake-model"
    instructions = thread["params"]["developerInstructions"]
    assert instructions.index("ALIAS-INSTRUCTIONS") < instructions.index("CLIENT-INSTRUCTIONS")
    assert turn["params"]["effort"] == "high"
    assert turn["params"]["summary"] == "detailed"
    assert turn["params"]["approvalPolicy"] == "never"
