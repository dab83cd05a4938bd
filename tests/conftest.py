from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fixtures.scripted_model import ScriptedModelServer, run_scripted_model
from supervisor.codex_binary import CodexBinaryNotFound, find_codex_binary


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
